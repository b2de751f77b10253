"""
Preemption loses nothing, on 1 process: a real run stopped by SIGTERM sent to its process group saves the iteration
it was in, exits with status 75 and one line, and --resume (after a SIGKILL too) ends bit-identical to an
uninterrupted run, and resumes on 2 processes. Also: a second signal while a checkpoint is written, a signal during
evaluation (in this process and to train_net.py --eval-only), and the images another number of processes reads.
(2 gloo processes: test_preemption_gloo.py; a LazyConfig: test_preemption_lazy.py; full disks: test_full_disk.py;
submitit and SLURM: test_submit.py.)
"""
import os
import shutil
import signal
import time
from argparse import Namespace

import pytest
import torch

from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from conftest import DEMO_CONFIG, SMALL_OPTS, small_cfg, small_recipe
from efl.data.samplers import RepeatFactorSampler
from efl.data.train_loader import ResumableSampler
from efl.config import load
from efl.engine import EFLCheckpointer, Preempted, evaluate, launch, run
from efl.engine.signals import stopping_on_signals
from interruptions import (
    Started,
    assert_kept_and_trained_on,
    assert_same_end,
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

    # another number of processes: the state of 1 process resumed by 2 (the same settings: plain sampling), forked
    # from this process as train_net.py forks its workers on the CPU
    two = tmp_path / "for_two_processes"
    command = yacs_command(two, 1, "--resume")
    opts = command[command.index("--resume") + 1 :]
    args = Namespace(eval_only=False, resume=True, trust_pickle=False, config_file=str(DEMO_CONFIG), opts=opts)
    launch(run, 2, dist_url="auto", args=(args, load(str(DEMO_CONFIG), opts, num_processes=2)), fork=True)
    assert f"Starting training from iteration {stopped_at + 1}" in (two / "log.txt").read_text()
    assert_kept_and_trained_on(two / "model_final.pth", out / f"model_{stopped_at:07d}.pth")


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
