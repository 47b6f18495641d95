"""The fixed trainer with real TensorFlow and real CartPole: the properties the fix promises."""

from __future__ import annotations

from pathlib import Path

import cattrs
import numpy as np
import pytest
from ppo_support import SMALL
from tars_1005_ppo import PPOConfig
from tars_1005_ppo.legacy_v100 import LeakyPPOTrainer
from tars_1005_ppo.trainer import ConfigError, PPOTrainer


def small(**overrides: object) -> PPOConfig:
    return cattrs.structure({**SMALL, **overrides}, PPOConfig)


def test_tracing_count_constant_while_schedule_anneals() -> None:
    trainer = PPOTrainer(small(anneal_steps=2_000))
    try:
        first = trainer.train_iteration()
        lrs, clips, counts = [], [], []
        for _ in range(8):
            stats = trainer.train_iteration()
            lrs.append(float(trainer.optimizer.learning_rate.numpy()))
            clips.append(float(trainer.clip_range.numpy()))
            counts.append(stats.tracing_count)
        # The schedule really changed every iteration, and nothing retraced.
        assert len(set(lrs)) == len(lrs) and len(set(clips)) == len(clips)
        assert first.tracing_count == 3
        assert counts == [3] * len(counts)
    finally:
        trainer.close()


def test_rollout_buffer_is_reused_not_regrown() -> None:
    trainer = PPOTrainer(small())
    try:
        arrays = [id(a) for a in trainer.buffer.arrays]
        size = trainer.buffer_bytes()
        retained = []
        for _ in range(6):
            trainer.train_iteration()
            retained.append(trainer.retained_items())
        assert [id(a) for a in trainer.buffer.arrays] == arrays
        assert trainer.buffer_bytes() == size == 4 * 16 * (4 * 4 + 7 * 4)  # obs (4 floats) + 7 scalars
        assert max(retained) <= 100  # the bounded deque of episode returns
    finally:
        trainer.close()


def test_leaky_reproduction_retraces_and_retains() -> None:
    trainer = LeakyPPOTrainer(small())
    try:
        sizes, counts = [], []
        for _ in range(12):
            trainer.train_iteration()
            sizes.append(trainer.buffer_bytes())
            counts.append(trainer.tracing_count())
        assert sizes == sorted(sizes) and sizes[-1] == 12 * sizes[0]
        assert counts[-1] > counts[0]  # a Python-float schedule retraces the train step
    finally:
        trainer.close()


def test_training_improves_cartpole_return() -> None:
    """Real PPO: 20k steps with the default (rl-zoo) settings take CartPole well past a random policy."""
    trainer = PPOTrainer(PPOConfig(seed=1))
    try:
        initial = trainer.train_iteration().mean_return  # episodes of the untrained policy
        trainer.train(20_000)
        final = trainer.mean_return
        assert np.isfinite(initial) and initial < 40
        assert final > 2 * initial, f"return went from {initial:.1f} to {final:.1f}"
    finally:
        trainer.close()


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    trainer = PPOTrainer(small(seed=3))
    restored = None
    try:
        for _ in range(3):
            trainer.train_iteration()
        trainer.save(tmp_path / "ckpt")
        obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
        expected = trainer.policy_logits(obs)

        restored = PPOTrainer(small(seed=99))
        assert not np.allclose(restored.policy_logits(obs), expected)
        assert restored.restore(tmp_path / "ckpt")
        np.testing.assert_allclose(restored.policy_logits(obs), expected, rtol=1e-6)
        for a, b in zip(trainer.variables, restored.variables, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
        for a, b in zip(trainer.optimizer.variables, restored.optimizer.variables, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert (restored.iteration, restored.global_step) == (3, trainer.global_step)
        assert list(restored.episode_returns) == list(trainer.episode_returns)
        assert restored.train_iteration().iteration == 4  # and it trains on from there
        assert restored.tracing_count() == 3
    finally:
        trainer.close()
        if restored is not None:
            restored.close()


def test_restore_without_checkpoint_reports_false(tmp_path: Path) -> None:
    trainer = PPOTrainer(small())
    try:
        assert trainer.restore(tmp_path / "nothing-here") is False
    finally:
        trainer.close()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"n_steps": 0}, "n_steps must be > 0"),
        ({"num_envs": -1}, "num_envs must be > 0"),
        ({"hidden": []}, "hidden must be a non-empty list"),
        ({"gamma": 1.5}, "gamma must be between 0 and 1"),
    ],
)
def test_bad_numbers_are_refused_with_the_field_name(data: dict[str, object], message: str) -> None:
    with pytest.raises(cattrs.BaseValidationError) as info:
        cattrs.structure(data, PPOConfig)
    assert any(message in str(e) for e in info.value.exceptions)


def test_unknown_env_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown gymnasium environment 'NoSuchEnv-v0'"):
        PPOTrainer(small(env_id="NoSuchEnv-v0"))


def test_continuous_action_env_is_refused() -> None:
    with pytest.raises(ConfigError, match="needs a discrete one"):
        PPOTrainer(small(env_id="Pendulum-v1"))


def test_other_discrete_env_trains() -> None:
    trainer = PPOTrainer(small(env_id="Acrobot-v1"))
    try:
        stats = trainer.train_iteration()
        assert stats.global_step == 64 and trainer.n_actions == 3 and trainer.obs_dim == 6
    finally:
        trainer.close()
