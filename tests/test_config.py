"""Config loading: interpolation, errors naming the path, redaction."""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import pytest

from tars_core import PluginInfo
from tars_core.config import load_config, non_negative, plugin_config, positive
from tars_core.errors import ConfigError
from tars_core.model import percentage
from tars_core.redact import Redactor


@attrs.define
class DbConfig:
    lock_timeout: float = 2.0
    indexes: list[str] = attrs.field(factory=list)
    attempts: int = attrs.field(default=3, validator=positive)
    backoff: float = attrs.field(default=0.0, validator=non_negative)
    share: float = attrs.field(default=10.0, validator=percentage)


INFO = PluginInfo(name="tars-x", title="x", config=DbConfig)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "tars.yaml"
    p.write_text(text)
    return p


def test_interpolation_defaults_and_escape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TARS_DB_PASSWORD", "pa:ss#word")
    cfg, red = load_config(
        write(
            tmp_path,
            """
release: {name: "v1.0.1-${TARS_STAGE:-staging}"}
targets:
  postgres: "postgresql://app:${TARS_DB_PASSWORD}@db:5432/tars"
  redis: "redis://127.0.0.1:6379/0"
plugins:
  tars-x: {lock_timeout: 1.5, indexes: ["$$literal"]}
""",
        )
    )
    assert cfg.release.name == "v1.0.1-staging"
    assert cfg.targets.postgres == "postgresql://app:pa:ss#word@db:5432/tars"
    section = plugin_config(INFO, cfg)
    assert section == DbConfig(1.5, ["$literal"], 3)
    assert red(f"connect {cfg.targets.postgres} failed") == "connect postgresql://app:***@db:5432/tars failed"
    assert "pa:ss#word" not in red("the password pa:ss#word leaked")


def test_plugin_type_error_names_path_and_type(tmp_path: Path) -> None:
    cfg, _ = load_config(write(tmp_path, "plugins:\n  tars-x: {lock_timeout: soon}\n"))
    with pytest.raises(ConfigError, match=r"plugins\.tars-x\.lock_timeout: invalid value for type, expected float"):
        plugin_config(INFO, cfg)


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    cfg, _ = load_config(write(tmp_path, "plugins:\n  tars-x: {lock_timout: 1}\n"))
    with pytest.raises(ConfigError, match="lock_timout"):
        plugin_config(INFO, cfg)
    with pytest.raises(ConfigError, match="tagets"):
        load_config(write(tmp_path, "tagets: {}\n"))


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_redactor_data_masks_secret_keys() -> None:
    red = Redactor()
    data = red.data({"api_token": "abc123", "url": "redis://:hunter2@r:6379/0", "n": 3})
    assert data == {"api_token": "***", "url": "redis://:***@r:6379/0", "n": 3}


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("{attempts: 0}", "plugins.tars-x: attempts must be > 0, got 0"),
        ("{attempts: -2}", "plugins.tars-x: attempts must be > 0, got -2"),
        ("{backoff: -0.5}", "plugins.tars-x: backoff must be >= 0, got -0.5"),
        ("{share: 101}", "plugins.tars-x: share must be a percentage between 0 and 100, got 101"),
        ("{share: -1}", "plugins.tars-x: share must be a percentage between 0 and 100, got -1"),
    ],
)
def test_shared_validators_message_is_kept(tmp_path: Path, section: str, expected: str) -> None:
    """``positive`` / ``non_negative`` say the field, the bound and the value given, not cattrs' "invalid value"."""
    cfg, _ = load_config(write(tmp_path, f"plugins:\n  tars-x: {section}\n"))
    with pytest.raises(ConfigError, match=re.escape(expected)):
        plugin_config(INFO, cfg)


def test_shared_validators_accept_their_bounds(tmp_path: Path) -> None:
    cfg, _ = load_config(write(tmp_path, "plugins:\n  tars-x: {attempts: 1, backoff: 0, share: 100}\n"))
    assert plugin_config(INFO, cfg) == DbConfig(attempts=1, backoff=0.0, share=100.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("release: v1.0.1\n", "release: expected a mapping such as {name: v1.0.1}, got a string"),
        ("state: 5\n", "state: expected a mapping such as {url: sqlite:///.tars/state.db}, got a number"),
        ("targets: [a, b]\n", "targets: expected a mapping such as {postgres: postgresql://db/tars}, got a list"),
        (
            "plugins: yes\n",
            "plugins: expected a mapping such as {tars-1004-db: {lock_timeout_ms: 2000}}, got a boolean",
        ),
        ("plugins: {tars-x: 3}\n", "plugins.tars-x: expected a mapping of the plugin's settings, got a number"),
        ("release: {timeouts: 60}\n", "release.timeouts: expected a mapping such as {apply: 900}, got a number"),
    ],
)
def test_a_scalar_where_a_section_belongs_is_named(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert str(info.value) == f"config {tmp_path / 'tars.yaml'}: {expected}"


def test_an_empty_section_is_the_defaults(tmp_path: Path) -> None:
    cfg, _ = load_config(write(tmp_path, "release:\nstate:\n"))
    assert cfg.release.name == "v1.0.1" and cfg.state.url is None


def test_plugin_timeouts_per_phase_or_one_number_for_every_phase(tmp_path: Path) -> None:
    cfg, _ = load_config(
        write(
            tmp_path,
            "release:\n  timeouts: {verify: 200}\n  plugin_timeouts: {tars-x: {apply: 1800}, tars-y: 42}\n",
        )
    )
    assert cfg.timeout("tars-x", "apply") == 1800
    assert cfg.timeout("tars-x", "verify") == 200  # the release-wide one where the plugin has none
    assert cfg.timeout("tars-x", "rollback") == 900
    assert [cfg.timeout("tars-y", p) for p in ("apply", "verify", "rollback", "benchmark")] == [42] * 4
    assert cfg.timeout("tars-z", "apply") == 900
    assert cfg.release.timeout_grace == 30


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "{tars-x: {aply: 1800}}",
            "release.plugin_timeouts.tars-x.aply: unknown phase; expected one of apply, verify, rollback, "
            "benchmark, report, preflight, sandbox",
        ),
        ("{tars-x: {apply: soon}}", "release.plugin_timeouts.tars-x.apply: invalid value for type"),
        ("{tars-x: {apply: -1}}", "release.plugin_timeouts.tars-x.apply: must be > 0, got -1"),
        ("{tars-x: 0}", "release.plugin_timeouts.tars-x: must be > 0, got 0"),
        ("{tars-x: soon}", "release.plugin_timeouts.tars-x: expected seconds for every phase (1800) or a mapping"),
        ("1800", "release.plugin_timeouts: expected a mapping such as {tars-1004-db: {apply: 1800}}, got a number"),
    ],
)
def test_wrong_plugin_timeouts_name_the_path(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(write(tmp_path, f"release:\n  plugin_timeouts: {text}\n"))


def test_negative_grace_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"release: timeout_grace must be >= 0, got -1"):
        load_config(write(tmp_path, "release: {timeout_grace: -1}\n"))
