"""
Preemption loses nothing. Real runs are stopped as schedulers and users stop them: SIGTERM, SIGUSR1 and SIGINT sent
to the process group of 1 and of 2 gloo processes, to the launching process only, to one worker only; they save
the iteration they were in, exit with status 75 and one line, and --resume (after a SIGKILL too) ends bit-identical
to an uninterrupted run, for both config systems. Also: a second signal while a checkpoint is written, a signal
during evaluation, a full disk, an OUTPUT_DIR that cannot be written, another number of processes on resume, and
submitit's local executor preempting and requeueing a real job.
"""
import errno
import json
import os
import shutil
import signal
import subprocess
import time
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from conftest import DEMO_CONFIG, REPO, SMALL_OPTS, small_cfg, small_recipe, stops_before_any_process
from efl.data.samplers import RepeatFactorSampler
from efl.data.train_loader import ResumableSampler
from efl.engine import EFLCheckpointer, Preempted, evaluate, run
from efl.engine.checkpoint import DiskFullError
from efl.engine.signals import stopping_on_signals
from interruptions import (
    ENV,
    Started,
    assert_kept_and_trained_on,
    assert_same_end,
    lazy_command,
    resumed_from,
    run_to_the_end,
    sigkill_once_training,
    stop_once_training,
    yacs_command,
)


def test_one_process_stopped_by_sigterm_then_killed_resumes_to_the_uninterrupted_end(uninterrupted, tmp_path):
    """SIGTERM to the run's process group; --resume; SIGKILL to its group after its next checkpoint; --resume."""
    reference, _ = uninterrupted("yacs", 1)
    out = tmp_path / "run"
    stopped_at = stop_once_training(yacs_command(out, 1), out, -1, lambda run: run.signal_group(signal.SIGTERM), "SIGTERM")
    shutil.copytree(out, tmp_path / "for_two_processes")

    sigkill_once_training(Started(yacs_command(out, 1, "--resume"), out), stopped_at)
    resumed = run_to_the_end(yacs_command(out, 1, "--resume"))
    assert resumed_from(resumed) > stopped_at + 1
    assert "Taking over" in resumed.stderr  # the killed run's lock on OUTPUT_DIR
    assert_same_end(out, reference)

    # another number of processes: the state of 1 process resumed by 2
    two = tmp_path / "for_two_processes"
    command = yacs_command(two, 1, "--resume")
    command[command.index("--num-gpus") + 1] = "2"  # the same settings (plain sampling), on 2 processes
    resumed = run_to_the_end(command)
    assert resumed_from(resumed) == stopped_at + 1
    assert_kept_and_trained_on(two / "model_final.pth", out / f"model_{stopped_at:07d}.pth")


def test_two_processes_stopped_every_way_resume_to_the_uninterrupted_end(uninterrupted, tmp_path):
    """
    2 gloo processes, the ceil-rounded repeat-factor sampler: SIGTERM to the launching process only (it passes it
    on); --resume; SIGUSR1 to one worker only (the workers agree on the stop); --resume; SIGINT twice to the whole
    group; --resume; SIGKILL to the group after its next checkpoint; --resume to the end.
    """
    reference, _ = uninterrupted("yacs", 2)
    out = tmp_path / "run"
    stopped_at = stop_once_training(yacs_command(out, 2), out, -1, lambda run: run.signal_launcher(signal.SIGTERM), "SIGTERM")
    shutil.copytree(out, tmp_path / "for_one_process")

    resume = yacs_command(out, 2, "--resume")
    one_worker = lambda run: os.kill(run.workers()[1], signal.SIGUSR1)  # noqa: E731
    stopped_at = stop_once_training(resume, out, stopped_at, one_worker, "a signal")  # the launcher did not get it

    def twice(run):
        run.signal_group(signal.SIGINT)
        run.signal_group(signal.SIGINT)  # a second signal changes nothing

    stopped_at = stop_once_training(resume, out, stopped_at, twice, "SIGINT")

    sigkill_once_training(Started(yacs_command(out, 2, "--resume"), out), stopped_at)
    run_to_the_end(yacs_command(out, 2, "--resume"))
    assert_same_end(out, reference)

    # another number of processes: the state of 2 processes resumed by 1, here in this process (efl.engine.run)
    one = tmp_path / "for_one_process"
    first_stop = int((one / "last_checkpoint").read_text()[len("model_") : -len(".pth")])
    command = yacs_command(one, 2, "--resume")
    opts = command[command.index("--resume") + 1 :]
    args = Namespace(eval_only=False, resume=True, trust_pickle=False, config_file=str(DEMO_CONFIG), opts=opts)
    run(args, small_recipe(*opts[len(SMALL_OPTS) :]))
    assert_kept_and_trained_on(one / "model_final.pth", one / f"model_{first_stop:07d}.pth")


def test_a_lazy_config_run_stopped_then_killed_resumes_to_the_uninterrupted_end(uninterrupted, tmp_path):
    """EFLFCOS from a LazyConfig counted in epochs, 2 gloo processes: SIGTERM to the group; --resume; SIGKILL;
    --resume. Every start resolves the same schedule and prints the same line."""
    reference, reference_run = uninterrupted("lazy", 2)
    out = tmp_path / "run"
    stopped_at = stop_once_training(lazy_command(out, 2), out, -1, lambda run: run.signal_group(signal.SIGTERM), "SIGTERM")
    sigkill_once_training(Started(lazy_command(out, 2, "--resume"), out), stopped_at)
    resumed = run_to_the_end(lazy_command(out, 2, "--resume"))
    line = (
        "0.17 epochs of 189 images after repeat-factor enlargement (each image ceil(r) times) at batch 4 = 48 "
        "iterations per epoch, 8 iterations; LR steps at 4 (epoch 0.1); warm-up 1 iterations (0.03 epochs)"
    )
    for log in (reference_run.stdout + reference_run.stderr, resumed.stdout + resumed.stderr):
        assert log.count(line) == 1, log[-3000:]
    assert_same_end(out, reference)


def test_a_second_signal_while_a_checkpoint_is_written_changes_nothing(tmp_path, monkeypatch):
    model = build_model(small_cfg())
    checkpointer = EFLCheckpointer(model, save_dir=str(tmp_path))
    save = torch.save

    def signalled_save(obj, f, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler's second SIGTERM, in the middle of the write
        os.kill(os.getpid(), signal.SIGINT)
        save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", signalled_save)
    with stopping_on_signals():
        checkpointer.save("model_0000003")
    monkeypatch.undo()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    saved = torch.load(tmp_path / "model_0000003.pth", map_location="cpu", weights_only=True)["model"]
    for key, value in model.state_dict().items():
        assert torch.equal(saved[key], value), key


def test_a_signal_during_evaluation_stops_it_and_writes_nothing(tmp_path):
    recipe = small_recipe("OUTPUT_DIR", tmp_path)
    model = recipe.build_model(None).eval()
    (test_set,) = recipe.test_sets()
    loader = test_set.build_loader

    class Interrupted:
        """The test set's loader, with a SIGTERM to this process after 3 images."""

        def __init__(self):
            self.loader = loader()

        def __len__(self):
            return len(self.loader)

        def __iter__(self):
            for index, inputs in enumerate(self.loader):
                if index == 3:
                    os.kill(os.getpid(), signal.SIGTERM)
                yield inputs

    with stopping_on_signals(), pytest.raises(Preempted, match="stopped by SIGTERM while evaluating: nothing written"):
        evaluate(model, [test_set._replace(build_loader=Interrupted)])
    assert not list(tmp_path.rglob("*.json"))


def test_eval_only_stopped_by_sigterm_exits_75_with_one_line(trained_demo, tmp_path):
    out, _ = trained_demo
    command = [
        *yacs_command(tmp_path, 1, "--eval-only")[:2], "--eval-only", "--config-file", str(DEMO_CONFIG), *SMALL_OPTS,
        "MODEL.WEIGHTS", str(out / "model_final.pth"), "DATASETS.TEST", "('efl_synth_test_train',)",
        "OUTPUT_DIR", str(tmp_path),
    ]  # fmt: skip
    started = Started(command, tmp_path)
    deadline = time.monotonic() + 300
    while "Start inference on" not in ((tmp_path / "log.txt").read_text() if (tmp_path / "log.txt").exists() else ""):
        assert started.process.poll() is None and time.monotonic() < deadline, started.stderr.read_text()[-3000:]
        time.sleep(0.02)
    started.signal_group(signal.SIGTERM)
    stopped = started.finish()
    assert stopped.returncode == 75 and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    assert stopped.stderr.strip().splitlines()[-1] == (
        "train_net.py: stopped by SIGTERM while evaluating: nothing written; evaluate again"
    )
    assert not (tmp_path / "inference").exists() or not list((tmp_path / "inference").rglob("*.json"))


def test_another_number_of_processes_reads_the_images_the_stopped_run_had_not_read():
    """The sampler of a run resumed at iteration N skips N global batches of one stream: with 1 process or 2
    (each taking every other index), the images of every later iteration are the same set."""
    dataset = DatasetCatalog.get("efl_synth_test_train")
    factors = RepeatFactorSampler.repeat_factors_from_category_frequency(dataset, 0.3)
    batch, resumed_at = 4, 7

    def per_iteration(world_size):
        streams = []
        for rank in range(world_size):
            sampler = RepeatFactorSampler(factors, rounding="ceil", seed=5)
            sampler._rank, sampler._world_size = rank, world_size
            resumable = ResumableSampler(sampler)
            resumable.skip = resumed_at * batch // world_size
            stream = iter(resumable)
            streams.append([next(stream) for _ in range(10 * batch // world_size)])
        per_rank = batch // world_size
        return [sorted(i for s in streams for i in s[k * per_rank : (k + 1) * per_rank]) for k in range(10)]

    assert per_iteration(1) == per_iteration(2)


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a tmpfs of 120 MB (one training checkpoint of the test model is about 90 MB); skips where
    mounting is not allowed."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=120m", "tmpfs", str(folder)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_full_disk_stops_the_run_in_one_line_and_resume_finishes_elsewhere(uninterrupted, small_disk, tmp_path):
    """The first checkpoint fits, the second does not: one line naming the file, the bytes it needed and the free
    space; the partial file removed; the first checkpoint and last_checkpoint untouched; moved to a disk with space,
    --resume ends as the uninterrupted run."""
    reference, _ = uninterrupted("yacs", 1)
    out = small_disk / "run"
    stopped = subprocess.run(yacs_command(out, 1), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    (line,) = [line for line in stopped.stderr.splitlines() if line.startswith("train_net.py: error: ")]
    assert f"no space left to write {out}/model_0000003.pth: it needs " in line and " MB free;" in line
    assert sorted(p.name for p in out.glob("model_*")) == ["model_0000001.pth"]
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"

    moved = tmp_path / "moved"
    shutil.copytree(out, moved, ignore=shutil.ignore_patterns("run.lock"))
    run_to_the_end(yacs_command(moved, 1, "--resume"))
    assert_same_end(moved, reference)


def test_a_full_disk_without_a_tmpfs(tmp_path, monkeypatch):
    """The same checks where no tmpfs can be mounted: the writer fails with ENOSPC half-way."""
    model = build_model(small_cfg())
    checkpointer = EFLCheckpointer(model, save_dir=str(tmp_path))
    checkpointer.save("model_0000001")

    save = torch.save

    def full(obj, f, *args, **kwargs):
        if not hasattr(f, "name"):  # not a file on disk: what the checkpointer counts the bytes needed with
            return save(obj, f, *args, **kwargs)
        f.write(b"the first bytes")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskFullError, match=rf"no space left to write {tmp_path}/model_0000003.pth: it needs \d"):
        checkpointer.save("model_0000003")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


def test_an_output_dir_that_cannot_be_written_stops_before_any_process_starts(tmp_path):
    (tmp_path / "a_file").write_text("")
    message = stops_before_any_process("--config-file", DEMO_CONFIG, *SMALL_OPTS, "OUTPUT_DIR", tmp_path / "a_file" / "out")
    assert message == (
        f"OUTPUT_DIR {tmp_path}/a_file/out cannot be created or written: {tmp_path}/a_file is not a folder; set "
        "OUTPUT_DIR to a writable folder"
    )
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(read_only)]).returncode == 0:
        try:
            message = stops_before_any_process("--config-file", DEMO_CONFIG, *SMALL_OPTS, "OUTPUT_DIR", read_only / "out")
        finally:
            subprocess.run(["umount", str(read_only)], check=True)
        assert f"{read_only} is not writable (a read-only file system)" in message
    if os.geteuid() != 0:  # root writes whatever the permissions say
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        message = stops_before_any_process("--config-file", DEMO_CONFIG, *SMALL_OPTS, "OUTPUT_DIR", locked / "out")
        assert f"{locked} is not writable" in message


def test_submitit_preempts_and_requeues_a_real_job_which_resumes_to_the_uninterrupted_end(
    uninterrupted, tmp_path, monkeypatch
):
    """tools/submit.py on submitit's local executor. SIGUSR2 to the job's task, as SLURM signals a job it preempts
    or that reaches its time limit: the task stops train_net.py (which saves its iteration) and requeues the job, which
    resumes from OUTPUT_DIR."""
    import submit

    reference, _ = uninterrupted("yacs", 1)
    monkeypatch.setenv("OMP_NUM_THREADS", ENV["OMP_NUM_THREADS"])  # the job's, as the reference's: same arithmetic
    out = tmp_path / "run"
    arguments = yacs_command(out, 1)
    arguments = arguments[arguments.index("--config-file") :]
    job = submit.main(["--cluster", "local", "--gpus-per-node", "1", "--timeout", "10", *arguments])
    deadline = time.monotonic() + 300
    while not (out / "model_0000001.pth").exists():
        assert job.state == "RUNNING" and time.monotonic() < deadline, job.stderr()
        time.sleep(0.05)
    train_net = json.loads((out / "run.lock").read_text())["pid"]
    task = int(Path(f"/proc/{train_net}/stat").read_text().rsplit(")", 1)[1].split()[1])  # its parent
    os.kill(task, signal.SIGUSR2)
    assert job.result() == 0
    log = job.stdout() + job.stderr()
    assert "Requeued job" in log and "train_net.py: stopped by SIGTERM after iteration" in log
    assert "Starting training from iteration 0" in log and "Starting training from iteration" in log.split("Requeued job")[1]
    assert_same_end(out, reference)


def test_on_slurm_each_node_starts_train_net_with_its_rank_and_the_first_nodes_address(monkeypatch):
    """The command of a job's task, in the environment SLURM gives the task of node 1 of a 2-node job."""
    from efl.engine.cluster import TRAIN_NET, TrainingJob

    for name, value in {
        "SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "2", "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NODEID": "1", "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_JOB_NODELIST": "gpu[07-08]",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    import submitit

    environment = submitit.JobEnvironment()
    command = TrainingJob(["--config-file", "c.yaml", "SOLVER.IMS_PER_BATCH", "16"], 8).command(environment)
    port = command[command.index("--dist-url") + 1].rsplit(":", 1)[1]
    assert command[1:] == [
        TRAIN_NET, "--resume", "--num-gpus", "8", "--num-machines", "2", "--machine-rank", "1",
        "--dist-url", f"tcp://gpu07:{port}", "--config-file", "c.yaml", "SOLVER.IMS_PER_BATCH", "16",
    ]  # fmt: skip
    monkeypatch.setenv("SLURM_NODEID", "0")
    assert TrainingJob([], 8).command(submitit.JobEnvironment())[-1] == f"tcp://gpu07:{port}"  # the same address


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["--num-gpus", "2"], "the job sets --num-gpus itself: leave them out"),
        (["--nodes", "2", "--cluster", "local"], "the local executor runs one node"),
        (["MODEL.EFL.SCAEL", "4"], "unknown config key MODEL.EFL.SCAEL"),
    ],
)
def test_submit_refuses_mistakes_before_submitting(arguments, message, tmp_path):
    import submit

    with pytest.raises(SystemExit) as stop:
        submit.main(["--cluster", "local", "--config-file", str(DEMO_CONFIG), *SMALL_OPTS, "OUTPUT_DIR", str(tmp_path), *arguments])
    assert stop.value.code.startswith("submit.py: error: ") and message in stop.value.code
    assert not (tmp_path / "submitit").exists()


def test_submit_waits_for_a_failing_job_and_exits_with_its_message(trained_demo, tmp_path, monkeypatch):
    """--wait: a job whose run fails (here: weights that cannot be read, found where the job loads them) ends
    submit.py with one line and a failing status."""
    import submit

    broken = tmp_path / "broken.pth"
    broken.write_bytes((trained_demo[0] / "model_final.pth").read_bytes()[:1000])
    arguments = ["--eval-only", *SMALL_OPTS, "MODEL.WEIGHTS", str(broken), "OUTPUT_DIR", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as stop:
        submit.main(["--cluster", "local", "--gpus-per-node", "1", "--wait", "--config-file", str(DEMO_CONFIG), *arguments])
    assert stop.value.code.startswith("submit.py: job ") and "\n" not in stop.value.code
    assert f"failed: train_net.py: error: cannot read {broken}" in stop.value.code and "_log.err)" in stop.value.code
