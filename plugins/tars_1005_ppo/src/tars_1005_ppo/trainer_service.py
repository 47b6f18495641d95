# tensorflow ships no type information: its imports are Any, the rest of this module stays strict
# mypy: disable-error-code="import-untyped"
"""A long-running PPO trainer process that obeys the TARS-1005 feature flag (the sandbox's trainer).

    python -m tars_1005_ppo.trainer_service --redis redis://127.0.0.1:6379/0 --trainer-id t1 --port 9105

Before every iteration it reads the flag (``tars-1005-ppo-fixed`` in the ``tars:feature_flags`` hash):
``on`` runs :class:`~tars_1005_ppo.PPOTrainer`, ``off``/absent runs the v1.0.0 reproduction, and a fraction
such as ``0.25`` runs the fixed trainer only if this trainer's stable bucket under the flag
(:func:`tars_core.flags.canary_bucket` of the trainer id) falls under it: the canary. While Redis is away
it keeps the value it read last. A change of implementation rebuilds the trainer, the one place where
``clear_session()`` belongs.

After every iteration it reports what it actually runs to Redis, so ``tars_apply``/``tars_verify`` judge the
running process, not the flag: the hash ``<prefix>:trainer:<id>`` (implementation, RSS, tracing count,
iteration, heartbeat, whether the fixed code is importable here and its version), membership of the set
``<prefix>:trainers``, and a bounded list ``<prefix>:trainer:<id>:samples`` of recent samples. The same
figures are served as Prometheus metrics on ``--port`` (which is also the sandbox's readiness probe).

A process above ``--max-rss-mb`` rebuilds its trainer, as an orchestrator would OOM-restart it, so the
leaky baseline cannot take a shared machine down.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cattrs

from tars_1005_ppo import __version__
from tars_1005_ppo.config import FLAG_NAME, STATUS_PREFIX, PPOConfig, describe_config_error, implementation_for
from tars_core.flags import FlagReader

log = logging.getLogger("tars_1005_ppo.trainer_service")


def status_key(prefix: str, trainer_id: str) -> str:
    return f"{prefix}:trainer:{trainer_id}"


def fixed_code_available() -> bool:
    """Whether this interpreter can import the fixed trainer (without importing TensorFlow yet)."""
    return (
        importlib.util.find_spec("tars_1005_ppo.trainer") is not None
        and importlib.util.find_spec("tensorflow") is not None
    )


class TrainerService:
    def __init__(
        self,
        *,
        redis_url: str,
        trainer_id: str,
        flags_key: str,
        flag: str,
        prefix: str,
        config: PPOConfig,
        pause_s: float,
        max_rss_bytes: int,
        history: int,
    ) -> None:
        import psutil
        import redis

        self.redis = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=5)
        # ttl 0: read once per iteration, which is already the pace; an outage keeps the last value seen
        self.flags = FlagReader(redis_url, flags_key, ttl=0.0)
        self.trainer_id = trainer_id
        self.flag, self.prefix = flag, prefix
        self.config = config
        self.pause_s = pause_s
        self.max_rss_bytes = max_rss_bytes
        self.history = history
        self.stop = threading.Event()
        self.proc = psutil.Process()
        self.trainer: Any = None
        self.impl: str | None = None
        self.impl_iterations = 0
        self.switches = 0
        self.restarts = 0
        self.peak_rss = 0
        self.flag_value: str | None = None
        self.fixed_available = fixed_code_available()
        self.started_at = time.time()
        self.metrics: dict[str, Any] = {}

    # -- metrics ------------------------------------------------------------------------------------
    def serve_metrics(self, port: int) -> None:
        from prometheus_client import Counter, Gauge, start_http_server

        labels = ["trainer"]
        self.metrics = {
            "rss": Gauge("tars_ppo_rss_bytes", "Resident set size of the trainer process", labels),
            "tracing": Gauge("tars_ppo_tracing_count", "tf.function tracings of the current trainer", labels),
            "iteration": Gauge("tars_ppo_iteration", "PPO iterations of the current trainer", labels),
            "return": Gauge("tars_ppo_mean_return", "Mean return of the last 100 episodes", labels),
            "buffer": Gauge("tars_ppo_buffer_bytes", "Bytes held by the rollout buffer", labels),
            "fixed": Gauge("tars_ppo_fixed", "1 when the TARS-1005 fixed trainer runs", labels),
            "switches": Counter("tars_ppo_switches", "Implementation switches", labels),
        }
        start_http_server(port, addr="127.0.0.1")

    # -- lifecycle ------------------------------------------------------------------------------------
    def _build(self, impl: str) -> None:
        if self.trainer is not None:
            self.trainer.close()
            self.trainer = None
        import tensorflow as tf

        tf.keras.backend.clear_session()
        gc.collect()
        if impl == "fixed":
            from tars_1005_ppo.trainer import PPOTrainer

            self.trainer = PPOTrainer(self.config)
        else:
            from tars_1005_ppo.legacy_v100 import LeakyPPOTrainer

            self.trainer = LeakyPPOTrainer(self.config)
        self.impl = impl
        self.impl_iterations = 0
        import redis

        try:
            self.redis.delete(f"{status_key(self.prefix, self.trainer_id)}:samples")
        except redis.RedisError as exc:  # a Redis that pauses or restarts must not take the trainer down
            log.warning("cannot clear the old samples in Redis: %s", exc)

    def step(self) -> None:
        self.flag_value = self.flags.value(self.flag)
        want = implementation_for(self.flag_value, self.flag, self.trainer_id)
        if self.fixed_available is False and want == "fixed":
            want = "legacy"
        if want != self.impl:
            log.info(
                "switching trainer %s: %s -> %s (flag %s=%r)",
                self.trainer_id,
                self.impl,
                want,
                self.flag,
                self.flag_value,
            )
            if self.impl is not None:
                self.switches += 1
                if self.metrics:
                    self.metrics["switches"].labels(self.trainer_id).inc()
            self._build(want)
        stats = self.trainer.train_iteration()
        self.impl_iterations += 1
        rss = int(self.proc.memory_info().rss)
        self.peak_rss = max(self.peak_rss, rss)
        self._report(stats, rss)
        if rss > self.max_rss_bytes:
            log.warning(
                "trainer %s RSS %.0f MB above %.0f MB: rebuilding it (OOM restart)",
                self.trainer_id,
                rss / 2**20,
                self.max_rss_bytes / 2**20,
            )
            self.restarts += 1
            self._build(self.impl or "legacy")

    def _report(self, stats: Any, rss: int) -> None:
        import redis

        key = status_key(self.prefix, self.trainer_id)
        tracing = self.trainer.tracing_count()
        status = {
            "trainer_id": self.trainer_id,
            "state": "running",
            "implementation": self.impl or "",
            "flag_value": self.flag_value if self.flag_value is not None else "",
            "fixed_available": "1" if self.fixed_available else "0",
            "code_version": __version__,
            "rss_bytes": rss,
            "peak_rss_bytes": self.peak_rss,
            "tracing_count": tracing,
            "iteration": stats.iteration,
            "impl_iterations": self.impl_iterations,
            "global_step": stats.global_step,
            "mean_return": f"{stats.mean_return:.3f}",
            "buffer_bytes": self.trainer.buffer_bytes(),
            "retained_items": self.trainer.retained_items(),
            "switches": self.switches,
            "restarts": self.restarts,
            "pid": os.getpid(),
            "started_at": f"{self.started_at:.3f}",
            "heartbeat": f"{time.time():.3f}",
        }
        sample = json.dumps(
            {
                "t": round(time.time(), 3),
                "impl": self.impl,
                "iteration": stats.iteration,
                "rss": rss,
                "tracing": tracing,
            }
        )
        try:
            pipe = self.redis.pipeline()
            pipe.hset(key, mapping={k: str(v) for k, v in status.items()})
            pipe.sadd(f"{self.prefix}:trainers", self.trainer_id)
            pipe.lpush(f"{key}:samples", sample)
            pipe.ltrim(f"{key}:samples", 0, self.history - 1)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("cannot report status to Redis: %s", exc)
        if self.metrics:
            t = self.trainer_id
            self.metrics["rss"].labels(t).set(rss)
            self.metrics["tracing"].labels(t).set(tracing)
            self.metrics["iteration"].labels(t).set(stats.iteration)
            self.metrics["return"].labels(t).set(stats.mean_return)
            self.metrics["buffer"].labels(t).set(self.trainer.buffer_bytes())
            self.metrics["fixed"].labels(t).set(1 if self.impl == "fixed" else 0)

    def run(self) -> None:
        while not self.stop.is_set():
            self.step()
            self.stop.wait(self.pause_s)
        try:
            self.redis.hset(
                status_key(self.prefix, self.trainer_id),
                mapping={"state": "stopped", "heartbeat": f"{time.time():.3f}"},
            )
        except Exception as exc:
            log.warning("cannot report stop: %s", exc)
        self.flags.close()
        if self.trainer is not None:
            self.trainer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tars_1005_ppo.trainer_service", description="PPO trainer that obeys the TARS-1005 feature flag"
    )
    parser.add_argument("--redis", required=True, help="Redis URL holding the flags and the status")
    parser.add_argument("--trainer-id", required=True)
    parser.add_argument("--flags-key", default="tars:feature_flags")
    parser.add_argument("--flag", default=FLAG_NAME)
    parser.add_argument("--status-prefix", default=STATUS_PREFIX)
    parser.add_argument("--port", type=int, help="serve Prometheus metrics on 127.0.0.1:PORT")
    parser.add_argument("--config", type=Path, help="JSON file with PPOConfig fields")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between iterations (CPU budget)")
    parser.add_argument("--max-rss-mb", type=float, default=1536.0)
    parser.add_argument("--history", type=int, default=200, help="samples kept in Redis")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        data = json.loads(args.config.read_text()) if args.config else {}
        config = cattrs.structure(data, PPOConfig)
    except (OSError, ValueError, cattrs.BaseValidationError) as exc:
        print(f"trainer_service: bad --config: {describe_config_error(exc)}", file=sys.stderr)
        return 2
    service = TrainerService(
        redis_url=args.redis,
        trainer_id=args.trainer_id,
        flags_key=args.flags_key,
        flag=args.flag,
        prefix=args.status_prefix,
        config=config,
        pause_s=args.pause,
        max_rss_bytes=int(args.max_rss_mb * 2**20),
        history=args.history,
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: service.stop.set())
    if args.port:
        service.serve_metrics(args.port)
    service.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
