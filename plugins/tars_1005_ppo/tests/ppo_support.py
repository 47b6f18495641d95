"""Values shared by this plugin's tests (a uniquely named module: several plugins have a conftest.py)."""

from __future__ import annotations

# A trainer small enough that an iteration takes a fraction of a second on one thread.
SMALL = {"num_envs": 4, "n_steps": 16, "n_epochs": 2, "hidden": [16, 16], "anneal_steps": 200_000}
