"""
Real train_net.py runs that the tests interrupt as schedulers and users do (signals to the process group, to the
launching process only, to one worker only; SIGKILL), and how they compare with uninterrupted ones. Used by
test_resume.py and the test_preemption*.py files; the uninterrupted runs are conftest.py's session fixtures.
"""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import torch

import warm_start
from conftest import DEMO_CONFIG, REPO, SMALL_OPTS

# Deterministic on the CPU: constant learning rate (no schedule that depends on MAX_ITER), no random flip (the
# augmentation's random state is not part of a checkpoint), no evaluation. A checkpoint every 2 iterations.
DETERMINISTIC = [
    "SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR", "SOLVER.STEPS", "(1000,)", "SOLVER.WARMUP_ITERS", "0",
    "INPUT.RANDOM_FLIP", "none", "SOLVER.CHECKPOINT_PERIOD", "2", "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "10",
    "SOLVER.IMS_PER_BATCH", "2",
]  # fmt: skip
# The official rounding: with threshold 0.3 the test set's 120 images enlarge to 189 (each repeated ceil(r) times,
# 1 to 5), so a run stopped after its first checkpoints stops in the middle of the first enlarged epoch.
CEIL = [
    "DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler", "DATALOADER.REPEAT_THRESHOLD", "0.3",
    "DATALOADER.REPEAT_ROUNDING", "ceil",
]  # fmt: skip
LAZY_EPOCHS = REPO / "tests" / "configs" / "fcos_tiny_epochs.py"
# One thread per process: the processes share the machine's cores.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
STATISTICS = ("cls_loss.pos_grad", "cls_loss.neg_grad", "cls_loss.pos_neg", "loss_normalizer")


def yacs_command(output_dir, num_processes: int, *flags) -> List[str]:
    """The demo RetinaNet at test size, deterministic, 10 iterations: plain sampling with 1 process, the ceil-rounded
    repeat-factor sampler with 2."""
    sampler = CEIL if num_processes > 1 else []
    return [
        sys.executable, str(REPO / "train_net.py"), "--num-gpus", str(num_processes), "--config-file", str(DEMO_CONFIG),
        *flags, *SMALL_OPTS, *DETERMINISTIC, *sampler, "OUTPUT_DIR", str(output_dir),
    ]  # fmt: skip


def lazy_command(output_dir, num_processes: int, *flags) -> List[str]:
    """EFLFCOS from tests/configs/fcos_tiny_epochs.py: counted in epochs over the ceil-enlarged list."""
    return [
        sys.executable, str(REPO / "train_net.py"), "--num-gpus", str(num_processes), "--config-file", str(LAZY_EPOCHS),
        *flags, f"train.output_dir={output_dir}",
    ]  # fmt: skip


def run_to_the_end(command) -> subprocess.CompletedProcess:
    run = warm_start.run(command, ENV)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def checkpoint_iterations(output_dir: Path) -> List[int]:
    return sorted(int(m.group(1)) for p in output_dir.glob("model_*.pth") if (m := re.fullmatch(r"model_(\d+)\.pth", p.name)))


class Started:
    """A train_net.py run in a process group of its own (as a scheduler starts a job), to interrupt."""

    def __init__(self, command, output_dir: Path):
        self.output_dir = output_dir
        self.stderr = output_dir.parent / f"{output_dir.name}.{time.monotonic_ns()}.stderr"
        self.process = warm_start.popen(command, ENV, stderr=str(self.stderr))

    def wait_for_checkpoint_after(self, iteration: int) -> None:
        """Until a periodic checkpoint of an iteration after ``iteration`` is on disk (the run is training)."""
        deadline = time.monotonic() + 600
        while not [i for i in checkpoint_iterations(self.output_dir) if i > iteration]:
            assert self.process.poll() is None, self.stderr.read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)

    def workers(self) -> List[int]:
        """The pids of the worker processes (the launching process's children), rank order."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return sorted(int(c) for c in children)

    def signal_group(self, signum: int) -> None:
        os.killpg(self.process.pid, signum)

    def signal_launcher(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def finish(self) -> subprocess.CompletedProcess:
        returncode = self.process.wait(timeout=600)
        return subprocess.CompletedProcess(self.process.args, returncode, "", self.stderr.read_text())


def assert_stopped_with_a_checkpoint(stopped: subprocess.CompletedProcess, signal_name: str, output_dir: Path) -> int:
    """The run ended with status 75 and one line naming the checkpoint it saved, which last_checkpoint names and
    which is complete; returns its iteration."""
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    last = [line for line in stopped.stderr.splitlines() if line.startswith("train_net.py: ")]
    assert len(last) == 1, stopped.stderr[-3000:]
    match = re.fullmatch(
        rf"train_net.py: stopped by {signal_name} after iteration (\d+): saved (\S+); continue with --resume", last[0]
    )
    assert match, last[0]
    iteration, path = int(match.group(1)), match.group(2)
    assert path == str(output_dir / f"model_{iteration:07d}.pth")
    assert (output_dir / "last_checkpoint").read_text() == f"model_{iteration:07d}.pth"
    assert torch.load(path, map_location="cpu", weights_only=True)["iteration"] == iteration
    assert not list(output_dir.glob("*.partial-*")), "a partial checkpoint was left behind"
    return iteration


def resumed_from(run: subprocess.CompletedProcess) -> int:
    return int(re.search(r"Starting training from iteration (\d+)", run.stdout + run.stderr).group(1))


def assert_same_end(output_dir: Path, reference: Path) -> None:
    """The final checkpoints hold the same iteration, model (EFL buffers and normaliser included), optimizer and LR
    scheduler state, bit for bit."""
    ours = torch.load(output_dir / "model_final.pth", map_location="cpu", weights_only=True)
    theirs = torch.load(reference / "model_final.pth", map_location="cpu", weights_only=True)
    assert ours["iteration"] == theirs["iteration"]
    assert ours["model"].keys() == theirs["model"].keys()
    assert {"cls_loss.pos_grad", "cls_loss.neg_grad", "cls_loss.pos_neg"} <= set(theirs["model"])
    for key, value in theirs["model"].items():
        assert torch.equal(ours["model"][key], value), key
    state, expected = ours["trainer"]["optimizer"]["state"], theirs["trainer"]["optimizer"]["state"]
    assert state.keys() == expected.keys()
    for index, value in expected.items():
        assert torch.equal(state[index]["momentum_buffer"], value["momentum_buffer"]), index
    assert ours["trainer"]["hooks"] == theirs["trainer"]["hooks"]  # the LR scheduler


def assert_kept_and_trained_on(final: Path, checkpoint: Path) -> None:
    """Resumed from ``checkpoint`` (with another number of processes): the EFL statistics kept (the resumed run
    only added to them) and the training went on to the end."""
    start = torch.load(checkpoint, map_location="cpu", weights_only=True)
    end = torch.load(final, map_location="cpu", weights_only=True)
    assert end["iteration"] > start["iteration"]
    for key in ("cls_loss.pos_grad", "cls_loss.neg_grad"):
        assert torch.all(end["model"][key] >= start["model"][key]) and not torch.equal(end["model"][key], start["model"][key]), key
    assert (start["model"]["cls_loss.neg_grad"] > 0).all()


def sigkill_once_training(started: Started, after_iteration: int) -> None:
    """SIGKILL the run's whole process group once it wrote a checkpoint after ``after_iteration``."""
    started.wait_for_checkpoint_after(after_iteration)
    started.signal_group(signal.SIGKILL)
    started.process.wait()
    assert not (started.output_dir / "model_final.pth").exists(), "the run ended before it was killed"


def stop_once_training(command, output_dir: Path, after_iteration: int, send, signal_name: str) -> int:
    """Start ``command``, and once it wrote a checkpoint after ``after_iteration``, ``send(started)`` a stop signal;
    it must stop with a checkpoint (as ``signal_name`` reports it): returns the iteration saved."""
    started = Started(command, output_dir)
    started.wait_for_checkpoint_after(after_iteration)
    send(started)
    stopped_at = assert_stopped_with_a_checkpoint(started.finish(), signal_name, output_dir)
    assert stopped_at > after_iteration
    return stopped_at
