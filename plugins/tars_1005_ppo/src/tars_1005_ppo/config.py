"""Configuration and flag semantics shared by the trainer, the trainer service, the soak harness and the hooks.

This module must stay importable without TensorFlow or gymnasium: the plugin's entry point imports it when
``tars-run list`` discovers plugins, and cattrs structures the ``plugins.tars-1005-ppo`` section into these
classes before anything runs, so a bad value fails early with its path.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import attrs

from tars_core.flags import enabled_for
from tars_core.model import non_empty, non_negative, positive, unit_interval

Implementation = Literal["fixed", "legacy"]

FLAG_NAME = "tars-1005-ppo-fixed"
STATUS_PREFIX = "tars:ppo"


@attrs.define(frozen=True)
class PPOConfig:
    """PPO hyperparameters; defaults are the rl-baselines3-zoo CartPole-v1 settings (500 within 1e5 steps).

    ``n_steps`` x ``num_envs`` is the rollout buffer, allocated once: a value of 0 is refused here rather
    than producing an empty buffer that trains on nothing.
    """

    env_id: str = attrs.field(default="CartPole-v1", validator=non_empty)
    num_envs: int = attrs.field(default=8, validator=positive)
    n_steps: int = attrs.field(default=32, validator=positive)
    n_epochs: int = attrs.field(default=20, validator=positive)
    n_minibatches: int = attrs.field(default=1, validator=positive)
    learning_rate: float = attrs.field(default=1e-3, validator=positive)
    clip_range: float = attrs.field(default=0.2, validator=positive)
    # Linear annealing horizon of learning rate and clip range in environment steps; 0 keeps them fixed
    # (a long-running trainer). The fraction never drops below ``anneal_floor`` so a soak keeps learning.
    anneal_steps: int = attrs.field(default=100_000, validator=non_negative)
    anneal_floor: float = attrs.field(default=0.05, validator=unit_interval)
    gamma: float = attrs.field(default=0.98, validator=unit_interval)
    gae_lambda: float = attrs.field(default=0.8, validator=unit_interval)
    ent_coef: float = attrs.field(default=0.0, validator=non_negative)
    vf_coef: float = attrs.field(default=0.5, validator=non_negative)
    max_grad_norm: float = attrs.field(default=0.5, validator=positive)
    hidden: tuple[int, ...] = attrs.field(default=(64, 64), converter=tuple)
    seed: int = 0

    @hidden.validator
    def _check_hidden(self, attribute: attrs.Attribute[Any], value: tuple[int, ...]) -> None:
        if not value or any(int(h) <= 0 for h in value):
            raise ValueError(f"hidden must be a non-empty list of positive layer widths, got {list(value)!r}")

    @property
    def batch_size(self) -> int:
        return self.n_steps * self.num_envs

    @property
    def minibatch_size(self) -> int:
        return max(1, self.batch_size // self.n_minibatches)


@attrs.define
class PPOFixConfig:
    """The ``plugins.tars-1005-ppo`` config section.

    The flag and status keys are those the trainer service reads and writes; the budgets are the seed's
    target ("PPO memory stable at under 1 GB") turned into a slope and a peak the soak judge can check.
    """

    flag: str = attrs.field(default=FLAG_NAME, validator=non_empty)
    status_prefix: str = attrs.field(default=STATUS_PREFIX, validator=non_empty)
    # 0 switches every trainer at once; a fraction in (0, 1) first switches only the trainers whose stable
    # bucket under the flag falls under it, watches them for canary_observe_s, then switches the rest.
    canary_fraction: float = attrs.field(default=0.0, validator=unit_interval)
    canary_observe_s: float = attrs.field(default=10.0, validator=non_negative)
    switch_timeout_s: float = attrs.field(default=90.0, validator=positive)
    stale_after_s: float = attrs.field(default=30.0, validator=positive)
    min_trainers: int = attrs.field(default=1, validator=non_negative)
    verify_iterations: int = attrs.field(default=60, validator=positive)
    verify_warmup: float = attrs.field(default=0.25, validator=non_negative)
    slope_budget_kb: float = attrs.field(default=50.0, validator=positive)
    peak_budget_mb: float = attrs.field(default=1024.0, validator=positive)
    benchmark_iterations: int = attrs.field(default=80, validator=positive)
    soak_timeout_s: float = attrs.field(default=900.0, validator=positive)
    trainer: PPOConfig = attrs.field(factory=PPOConfig)


def implementation_for(flag_value: str | None, flag: str, trainer_id: str) -> Implementation:
    """Which trainer a service runs for a value of ``flag``: on, off, or a canary fraction such as ``"0.25"``,
    which runs the fixed trainer on the trainers whose stable bucket (:func:`tars_core.flags.canary_bucket`
    of the flag and the trainer id) falls under it."""
    return "fixed" if enabled_for(flag_value, flag, trainer_id) else "legacy"


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in ``"90s"``, ``"10m"``, ``"48h"`` or ``"1h30m"``; a bare number is seconds."""
    text = text.strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or _DURATION.sub("", text).strip():
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 10m, 48h, 1h30m)")
    return sum(float(n) * _UNIT[u] for n, u in parts)


def describe_config_error(exc: BaseException, root: str = "config") -> str:
    """One line naming each bad field and why, including our validators' messages (which cattrs' default
    formatting reduces to "invalid value")."""
    import cattrs
    from cattrs.v import format_exception

    if not isinstance(exc, cattrs.BaseValidationError):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__

    def fmt(err: BaseException, type_: Any) -> str:
        if type_ is None and isinstance(err, ValueError) and str(err):
            return str(err)
        return format_exception(err, type_)

    return "; ".join(cattrs.transform_error(exc, path=root, format_exception=fmt))
