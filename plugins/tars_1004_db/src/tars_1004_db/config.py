"""The ``plugins.tars-1004-db`` section as attrs classes, shared by the hooks, the library and the benchmark.

attrs only, so the entry-point module can import it without pulling in asyncpg. The section *is* the
index build settings plus where to build and how big the seed and the benchmark are: ``indexes`` takes
any ``BuildSettings``, the full config included.
"""

from __future__ import annotations

import attrs

from tars_core.model import non_empty, positive


@attrs.frozen
class BuildSettings:
    """How hard to try: per-statement timeouts and the retry schedule on lock timeouts."""

    lock_timeout_ms: int = attrs.field(default=2000, validator=positive)
    statement_timeout_ms: int = attrs.field(default=1_800_000, validator=positive)
    attempts: int = attrs.field(default=5, validator=positive)
    retry_delay_s: float = attrs.field(default=1.0, validator=positive)


@attrs.frozen
class BenchmarkConfig:
    """``plugins.tars-1004-db.benchmark``: size of the scratch benchmark (see README for durations)."""

    rows: int = attrs.field(default=1_000_000, validator=positive)
    runs: int = attrs.field(default=200, validator=positive)
    page_size: int = attrs.field(default=50, validator=positive)
    random_seed: int = 1004


@attrs.frozen
class DbFixConfig(BuildSettings):
    """``plugins.tars-1004-db``: how the indexes are built and how big the sandbox seed is."""

    schema: str = attrs.field(default="public", validator=non_empty)
    connect_timeout_s: float = attrs.field(default=10.0, validator=positive)
    # a connection lost mid-phase is retried on a new one, with backoff, for up to this long
    reconnect_s: float = attrs.field(default=60.0, validator=positive)
    seed_rows: int = attrs.field(default=1_000_000, validator=positive)
    benchmark: BenchmarkConfig = attrs.field(factory=BenchmarkConfig)
