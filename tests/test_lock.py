"""One run per OUTPUT_DIR: a second run stops with a message; the lock of a killed run is taken over."""
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

import warm_start
from conftest import DEMO_CONFIG, REPO, SMALL_OPTS, load_train_net
from efl.config import load
from efl.engine import OutputDirInUseError, OutputDirLock, launch_run

HOLD_LOCK = "import sys, time; from efl.engine import OutputDirLock; OutputDirLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)"  # noqa: E501


def test_a_second_holder_is_refused_with_the_owner_named(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputDirInUseError, match=f"in use by another run \\(pid {holder.pid} on host"):
            OutputDirLock(str(tmp_path)).acquire()
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the killed holder's lock; its file is left behind and taken over
    with OutputDirLock(str(tmp_path)) as lock:
        assert json.loads(open(lock.path).read())["pid"] == os.getpid()
    assert not os.path.exists(lock.path)


def test_a_stale_lock_file_is_taken_over_with_a_warning(tmp_path, caplog):
    (tmp_path / OutputDirLock.FILENAME).write_text(json.dumps({"pid": 999999, "host": "elsewhere", "command": "x"}))
    with caplog.at_level(logging.WARNING):
        with OutputDirLock(str(tmp_path)):
            pass
    assert any("Taking over" in r.getMessage() and "pid 999999 on host elsewhere" in r.getMessage() for r in caplog.records)


def test_two_runs_on_one_output_dir(tmp_path, caplog):
    """A real run holds OUTPUT_DIR; a second one stops before it starts any process, naming the first; once the
    first is killed, the next takes the directory over with a warning (test_resume.py resumes such a directory)."""
    command = [
        sys.executable, str(REPO / "train_net.py"), "--config-file", str(DEMO_CONFIG), *SMALL_OPTS,
        "DATASETS.TEST", "()", "SOLVER.CHECKPOINT_PERIOD", "1000", "SOLVER.MAX_ITER", "100000", "OUTPUT_DIR",
        str(tmp_path),
    ]  # fmt: skip
    first = warm_start.popen(command, dict(os.environ))
    try:
        lock_file = tmp_path / OutputDirLock.FILENAME
        deadline = time.monotonic() + 300
        while not (lock_file.exists() and lock_file.read_text()):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        args = load_train_net().argument_parser().parse_args(command[2:])
        with pytest.raises(OutputDirInUseError) as error:
            launch_run(args, load(args.config_file, args.opts))
        assert f"OUTPUT_DIR {tmp_path} is in use by another run (pid {first.pid} on host" in str(error.value)
        assert first.poll() is None
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    with caplog.at_level(logging.WARNING), OutputDirLock(str(tmp_path), "OUTPUT_DIR"):
        pass
    assert any(f"Taking over {lock_file}" in m and f"pid {first.pid}" in m for m in caplog.messages)
    assert not lock_file.exists()
