"""Issue 18 (faults get the contract's answer): the cases of this plugin, on real servers."""

from __future__ import annotations

from tars_1005_ppo import plugin

from tars_core.testing import assert_bad_config_refused


def test_every_bad_config_value_is_refused_naming_its_key() -> None:
    """Defects 5 and 7: every numeric and enum key (canary_fraction, trainer, ...) with a value of the wrong
    kind or out of range is refused on one line that names it, before anything runs."""
    cases = assert_bad_config_refused(plugin)
    assert len({c.path for c in cases}) > 5
