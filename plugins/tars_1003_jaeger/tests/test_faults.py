"""Issue 18 (faults get the contract's answer): the cases of this plugin, on real servers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
from tars_1003_jaeger import plugin

from tars_core.testing import assert_bad_config_refused


def test_every_bad_config_value_is_refused_naming_its_key() -> None:
    """Defects 5 and 7: every numeric and enum key (probe_messages, otlp_protocol, ...) with a value of the wrong
    kind or out of range is refused on one line that names it, before anything runs."""
    cases = assert_bad_config_refused(plugin)
    assert len({c.path for c in cases}) > 5


def test_the_services_recover_when_redis_loses_their_streams(services: Any, tmp_path: Path, sync_client: Any) -> None:
    """Found by the fault suite: Redis killed and restarted (no persistence, as the sandbox runs it) loses
    the streams and their consumer groups; the consumer then retried NOGROUP forever and every later verify
    failed with 0 % continuity. It must make its group again so the fix verifies once Redis is back."""
    import anyio
    from tars_1003_jaeger.plugin import JaegerConfig

    from tars_core import Targets
    from tars_core.testing import make_context

    services.start("producer", "eval-producer")
    services.start("consumer", "eval-consumer")
    keys = services.keys
    config = {k: v for k, v in keys.items() if k in {f.name for f in attrs.fields(JaegerConfig)}}
    ctx = make_context(
        plugin,
        targets=Targets(redis=services.redis_url, flags_key=keys["flags_key"]),
        config={**config, "probe_messages": 10, "pipeline_messages": 20},
        state_dir=tmp_path / "state",
    )
    sync_client.delete(keys["stream"], keys["result_stream"])  # what a restart without persistence does

    async def scenario() -> None:
        try:
            assert (await plugin.tars_apply(ctx)).changed
            result = await plugin.tars_verify(ctx)
            assert result.ok, result.checks
        finally:
            await plugin.tars_rollback(ctx)
            await ctx.flags.aclose()

    anyio.run(scenario)
    assert "creating it again" in services.log("eval-consumer")
