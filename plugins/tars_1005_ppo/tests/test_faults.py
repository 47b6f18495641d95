"""Issue 18 (faults get the contract's answer): the cases of this plugin, on real servers."""

from __future__ import annotations

from tars_1005_ppo import plugin

from tars_core.testing import assert_bad_config_refused


def test_every_bad_config_value_is_refused_naming_its_key() -> None:
    """Defects 5 and 7: every numeric and enum key (canary_fraction, trainer, ...) with a value of the wrong
    kind or out of range is refused on one line that names it, before anything runs."""
    cases = assert_bad_config_refused(plugin)
    assert len({c.path for c in cases}) > 5


def test_a_trainer_keeps_training_through_a_redis_outage_at_its_switch() -> None:
    """Found by the fault suite: Redis paused or killed while the flag switched the trainers made the switch's
    Redis call raise and the trainer service died; no ordinary run could bring the fix back ('0 live
    trainers' until someone restarted them). A trainer must go on, reporting again once Redis answers."""
    from tars_1005_ppo.config import PPOConfig
    from tars_1005_ppo.trainer_service import TrainerService

    from tars_core.processes import free_port

    svc = TrainerService(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",  # nobody listens: the outage
        trainer_id="t-outage",
        flags_key="faults:flags",
        flag="tars-1005-ppo-fixed",
        prefix="faults:ppo",
        config=PPOConfig(num_envs=2, n_steps=8, n_epochs=1, hidden=(8,)),
        pause_s=0.0,
        max_rss_bytes=2**40,
        history=5,
    )
    try:
        svc.step()  # builds the trainer the (unreadable) flag gives, then trains one iteration
        svc.step()
        assert svc.impl == "legacy" and svc.impl_iterations == 2
    finally:
        svc.flags.close()
        if svc.trainer is not None:
            svc.trainer.close()
