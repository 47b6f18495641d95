"""TARS-1005: the TensorFlow PPO trainer without the v1.0.0 memory leak, its soak harness and its hooks.

``PPOTrainer`` and ``RolloutBuffer`` are loaded on first access: importing the package (which the plugin
entry point does during ``tars-run list``) must not import TensorFlow.
"""

from __future__ import annotations

from typing import Any

from tars_1005_ppo.config import PPOConfig, PPOFixConfig

__version__ = "1.0.1"
__all__ = ["ConfigError", "PPOConfig", "PPOFixConfig", "PPOTrainer", "RolloutBuffer", "__version__"]

_LAZY = {"PPOTrainer", "RolloutBuffer", "ConfigError", "IterationStats"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from tars_1005_ppo import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'tars_1005_ppo' has no attribute {name!r}")
