"""tests/warm_start.py, which starts most of the suite's script runs: a forked run behaves as `python script.py`."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import warm_start

PROBE = textwrap.dedent(
    """
    import atexit, json, os, sys
    atexit.register(lambda: print("exit handler ran", flush=True))
    print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "path0": sys.path[0], "name": __name__,
                      "session": os.environ.get("EFL_TEST_SESSION"), "own_session": os.getsid(0) == os.getpid()}))
    if sys.argv[1] == "stop":
        sys.exit("probe: error: stopped as asked")
    if sys.argv[1] == "wait":
        print("waiting", flush=True)
        import time; time.sleep(600)
    """
)


def test_a_forked_run_is_the_script_run_by_a_new_interpreter(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = dict(os.environ)
    assert warm_start._zygote().fits(env), "a test left the environment changed: the zygote would not be used"
    for argv in (["go", "on"], ["stop"]):
        command = [sys.executable, str(script), *argv]
        warm = warm_start.run(command, env, cwd=tmp_path)
        fresh = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, start_new_session=True)
        assert (warm.returncode, warm.stdout, warm.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert warm.returncode == 1 and warm.stderr == "probe: error: stopped as asked\n"
    assert '"own_session": true' in warm.stdout and warm.stdout.endswith("exit handler ran\n")


def test_a_forked_run_is_the_test_process_s_child_to_signal_and_wait_for(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    run = warm_start.popen([sys.executable, str(script), "wait"], dict(os.environ), stdout=str(tmp_path / "out"))
    assert isinstance(run, warm_start.Run), "the zygote was not used"
    while "waiting" not in (tmp_path / "out").read_text():
        assert run.poll() is None
        time.sleep(0.02)
    assert os.getpgid(run.pid) == run.pid != os.getpgid(0)
    os.killpg(run.pid, signal.SIGKILL)
    assert run.wait(timeout=60) == -signal.SIGKILL
