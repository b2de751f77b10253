"""
Real processes for the suite's script runs, without a fresh interpreter each: a zygote (this file run as a script)
imports torch, torchvision, detectron2 and efl once per pytest process, then forks one process per run, which runs
the script as ``python <script> <args>`` does (as ``__main__``, with its sys.argv, sys.path[0], working directory,
environment, stdio to files, and in a session of its own, as a scheduler starts a job). Each run is still a process
of its own that signals, SIGKILL, locks and gloo act on; what it skips is the ~6 s that each interpreter spends
importing (torch 3.5 s, torchvision's import of torch._dynamo 2 s, detectron2), about 40 times per suite.

The zygote forks twice per run (the middle process exits at once), and the pytest process is a child subreaper
(Linux's prctl), so that every run becomes the pytest process's own child: it waits for the run and reads its exit
status as it does a subprocess's. A run whose environment differs from the zygote's in anything but the thread count
(which may change what its imports did), or a machine without prctl, gets a fresh interpreter instead.
"""
import atexit
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
# What the suite's scripts import, imported once by the zygote (a run imports anything else itself).
PRELOADED = ("torch", "torchvision", "detectron2.engine", "detectron2.evaluation", "efl", "efl.config", "efl.engine")
# May differ between the zygote and a run: the run sets its thread count from the first; pytest sets the second
# for each test, and nothing reads it at import.
PER_RUN = ("OMP_NUM_THREADS", "PYTEST_CURRENT_TEST")
PR_SET_CHILD_SUBREAPER = 36


class Run:
    """A started run, with the part of subprocess.Popen's interface the tests use."""

    def __init__(self, pid: int, args: Sequence[str]):
        self.pid, self.args, self.returncode = pid, list(args), None

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.01)
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)


class Zygote:
    """The client side: the zygote process of this pytest process, started at the first warm run."""

    def __init__(self):
        self.env = dict(os.environ)
        self.process = subprocess.Popen(
            [sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO, env=self.env
        )
        ready = self.process.stdout.readline()
        assert ready == "ready\n", f"the zygote did not start: {ready!r}"

    def fits(self, env: Dict[str, str]) -> bool:
        keys = (set(env) | set(self.env)) - set(PER_RUN)
        return all(env.get(k) == self.env.get(k) for k in keys)

    def start(self, command: Sequence[str], env: Dict[str, str], cwd: Path, stdout: str, stderr: str) -> Run:
        request = {"argv": list(command[1:]), "env": env, "cwd": str(cwd), "stdout": stdout, "stderr": stderr}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return Run(int(self.process.stdout.readline()), command)


_ZYGOTE: List[Zygote] = []


def _zygote() -> Optional[Zygote]:
    if not _ZYGOTE:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
                return None
        except (OSError, AttributeError):
            return None
        _ZYGOTE.append(Zygote())
    return _ZYGOTE[0]


def popen(command: Sequence[str], env: Dict[str, str], stdout: str = os.devnull, stderr: str = os.devnull, cwd=REPO):
    """
    ``command`` ([sys.executable, script, *args]) started in a session of its own, its stdout and stderr written to
    the files named; a Run (warm) or a subprocess.Popen (a fresh interpreter, see the module's docstring).
    """
    command = [str(c) for c in command]
    zygote = _zygote() if command[0] == sys.executable and command[1].endswith(".py") else None
    if zygote is not None and zygote.fits(env):
        return zygote.start(command, env, cwd, stdout, stderr)
    with open(stdout, "w") as out, open(stderr, "w") as err:
        return subprocess.Popen(command, cwd=cwd, env=env, start_new_session=True, stdout=out, stderr=err)


def run(command: Sequence[str], env: Dict[str, str], timeout: float = 600, cwd=REPO) -> subprocess.CompletedProcess:
    """subprocess.run(command, capture_output=True, text=True) through :func:`popen`."""
    with tempfile.TemporaryDirectory(prefix="efl_run_") as folder:
        stdout, stderr = os.path.join(folder, "stdout"), os.path.join(folder, "stderr")
        started = popen(command, env, stdout, stderr, cwd)
        try:
            started.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            started.kill()
            started.wait()
            raise
        return subprocess.CompletedProcess(started.args, started.returncode, Path(stdout).read_text(), Path(stderr).read_text())


def _serve() -> dict:
    """The zygote's loop; returns only in a run's process, with its request."""
    import importlib

    for module in PRELOADED:
        importlib.import_module(module)
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid_pipe = os.pipe()
        middle = os.fork()
        if middle == 0:
            run_pid = os.fork()
            if run_pid == 0:
                os.close(pid_pipe[0])
                os.close(pid_pipe[1])
                return request
            os.write(pid_pipe[1], f"{run_pid}\n".encode())
            os._exit(0)
        os.close(pid_pipe[1])
        with os.fdopen(pid_pipe[0]) as pipe:
            run_pid = int(pipe.read())
        os.waitpid(middle, 0)  # the run is the pytest process's child from here on (it is a subreaper)
        print(run_pid, flush=True)
    sys.exit(0)


def _become(request: dict) -> None:
    """Turn this forked process into ``python <script> <args>`` started as the request says."""
    import runpy

    import torch

    os.setsid()
    for fd, path, mode in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                           (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):  # fmt: skip
        opened = os.open(path, mode, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdin = open(0, closefd=False)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    script, *args = request["argv"]
    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    try:
        runpy.run_path(script, run_name="__main__")
        status = 0
    except SystemExit as stop:  # as the interpreter reports sys.exit's argument
        status = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
        if not isinstance(stop.code, (int, type(None))):
            print(stop.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        status = 1
    # The end of an interpreter, less the teardown of every module (1.3 s with torch loaded): the exit handlers
    # (detectron2's closes its log files), then the streams.
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    _become(_serve())
