"""The embedded sandbox: a throwaway local stand-in of a T.A.R.S. v1.0.0 deployment under ``.tars/sandbox/``.

It runs its own PostgreSQL cluster, ``redis-server`` and Prometheus on free loopback ports, plus whatever
services the installed plugins contribute through ``tars_sandbox``; ``tars_sandbox_seed`` loads each
plugin's baseline before those services start. One module per job:

* :mod:`~tars_core.sandbox.state`: ``state.json`` (what runs, as which process), the folders, the lock;
* :mod:`~tars_core.sandbox.binaries`: finding initdb/postgres, redis-server and prometheus;
* :mod:`~tars_core.sandbox.recipes`: how the core servers are built and run, and Prometheus' config;
* :mod:`~tars_core.sandbox.supervise`: the recorded services on the shared supervisor
  (:mod:`tars_core.processes`);
* :mod:`~tars_core.sandbox.joining`: plugins joining (their hooks) and leaving;
* :mod:`~tars_core.sandbox.lifecycle`: up, status, down, destroy, reset;
* :mod:`~tars_core.sandbox.command`: what ``tars-run`` calls, and the text it prints.
"""

from tars_core.errors import SandboxError
from tars_core.sandbox.binaries import find_binaries
from tars_core.sandbox.command import ensure_running, run_command
from tars_core.sandbox.lifecycle import UpResult, destroy, down, reset, status, up
from tars_core.sandbox.recipes import prometheus_argv, prometheus_config

__all__ = [
    "SandboxError",
    "UpResult",
    "destroy",
    "down",
    "ensure_running",
    "find_binaries",
    "prometheus_argv",
    "prometheus_config",
    "reset",
    "run_command",
    "status",
    "up",
]
