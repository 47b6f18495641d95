"""Issue 18 (faults get the contract's answer): the cases of this plugin, on real servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from tars_1005_ppo import plugin

from tars_core.testing import assert_bad_config_refused
from tars_core.waiting import wait_until

pytestmark = [pytest.mark.timeout(180)]


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


def _soak_processes(out: Path) -> list[int]:
    from tars_1005_ppo.soak import SOAK_MARK

    from tars_core.processes import marked_processes

    return [p.pid for p in marked_processes((SOAK_MARK, str(out.resolve())))]


def test_a_soak_dies_with_the_run_that_started_it(tmp_path: Path) -> None:
    """Defect 3: SIGKILL of tars-run during verify left the soak child (TensorFlow, ~600 MB) training on,
    an orphan in the folder the next verify uses. It must die with its parent, however the parent dies."""
    out = tmp_path / "verify-soak"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, anyio\n"
            "from pathlib import Path\n"
            "from tars_1005_ppo.config import PPOFixConfig\n"
            "from tars_1005_ppo.soak import soak_subprocess\n"
            "soak = soak_subprocess(Path(sys.argv[1]), impl='fixed', fix=PPOFixConfig(), iterations=10000)\n"
            "anyio.run(lambda: soak)\n",
            str(out),
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        children = wait_until(lambda: _soak_processes(out), timeout=60, interval=0.1, what="the soak started")
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        wait_until(lambda: not _soak_processes(out), timeout=20, interval=0.1, what="the soak gone with its parent")
        assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in children)
    finally:
        if parent.poll() is None:
            parent.kill()


def test_the_next_soak_stops_a_leftover_in_its_folder(tmp_path: Path) -> None:
    """A soak left running in the folder (by a core that did not tie it to its parent) is stopped before
    the next soak there starts."""
    from tars_1005_ppo.soak import SOAK_MARK, stop_leftover_soaks

    out = tmp_path / "verify-soak"
    out.mkdir()
    env = {**os.environ, SOAK_MARK: str(out.resolve())}
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], env=env)
    try:
        wait_until(lambda: _soak_processes(out), timeout=20, interval=0.05, what="the leftover visible")
        assert stop_leftover_soaks(out) == [leftover.pid]
        assert leftover.wait(timeout=20) != 0
        assert _soak_processes(out) == []
    finally:
        if leftover.poll() is None:
            leftover.kill()
