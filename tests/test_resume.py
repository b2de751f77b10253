"""
SIGKILL and --resume give the run an uninterrupted one would have, with 1 and 2 processes; checkpoints are written
safely, and resuming passes over a checkpoint that cannot be read.
"""
import logging
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from conftest import DEMO_CONFIG, REPO, SMALL_OPTS, assert_stops_with, small_cfg
from efl import ConfigError
from efl.engine import EFLCheckpointer

# Deterministic on the CPU: constant learning rate (no schedule that depends on MAX_ITER), no random flip (the
# augmentation's random state is not part of a checkpoint), no evaluation. A checkpoint every 2 iterations.
DETERMINISTIC = [
    "SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR", "SOLVER.STEPS", "(1000,)", "SOLVER.WARMUP_ITERS", "0",
    "INPUT.RANDOM_FLIP", "none", "SOLVER.CHECKPOINT_PERIOD", "2", "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "6",
]  # fmt: skip
SAMPLERS = {
    "TrainingSampler": [],
    # the official rounding: with threshold 0.3 the test set's 120 images enlarge to 189 (each repeated ceil(r)
    # times, 1 to 5), so a run killed after its first checkpoint stops in the middle of the first enlarged epoch
    "ceil": [
        "DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler", "DATALOADER.REPEAT_THRESHOLD", "0.3",
        "DATALOADER.REPEAT_ROUNDING", "ceil",
    ],
}  # fmt: skip


def command(output_dir, num_processes, sampler, *flags):
    return [
        sys.executable, str(REPO / "train_net.py"), "--num-gpus", str(num_processes), "--config-file", str(DEMO_CONFIG),
        *flags, *SMALL_OPTS, *DETERMINISTIC, *SAMPLERS[sampler], "OUTPUT_DIR", str(output_dir),
    ]  # fmt: skip


# One thread per process: the processes share the machine's cores.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_to_the_end(*command):
    run = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def kill_after_first_checkpoint(command, output_dir):
    """Start a run in its own process group and SIGKILL the whole group once a periodic checkpoint is on disk."""
    process = subprocess.Popen(
        command, cwd=REPO, env=ENV, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 600
    while not (output_dir / "model_0000001.pth").exists():
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert not (output_dir / "model_final.pth").exists(), "the run ended before it was killed"


@pytest.mark.parametrize("num_processes,sampler", [(1, "TrainingSampler"), (2, "ceil")])
def test_a_killed_run_resumed_ends_as_the_uninterrupted_one(tmp_path, num_processes, sampler):
    """(detectron2's stochastic repeat-factor rounding resumes its own stream exactly as these samplers do:
    test_bad_input.py; the engine resumes every sampler the same way.)"""
    killed = tmp_path / "killed"
    kill_after_first_checkpoint(command(killed, num_processes, sampler), killed)
    resuming = run_to_the_end(*command(killed, num_processes, sampler, "--resume"))
    log = resuming.stdout + resuming.stderr
    assert int(re.search(r"Starting training from iteration (\d+)", log).group(1)) >= 2
    assert "Taking over" in log  # the killed run's lock on OUTPUT_DIR
    run_to_the_end(*command(tmp_path / "uninterrupted", num_processes, sampler))
    resumed = torch.load(killed / "model_final.pth", map_location="cpu", weights_only=True)
    uninterrupted = torch.load(tmp_path / "uninterrupted" / "model_final.pth", map_location="cpu", weights_only=True)

    assert resumed["iteration"] == uninterrupted["iteration"] == 5
    model, expected = resumed["model"], uninterrupted["model"]
    assert model.keys() == expected.keys()
    for key in ("cls_loss.pos_grad", "cls_loss.neg_grad", "cls_loss.pos_neg", "loss_normalizer"):
        assert key in model
    for key, value in expected.items():
        assert torch.equal(model[key], value), key
    optimizer = resumed["trainer"]["optimizer"]
    expected_optimizer = uninterrupted["trainer"]["optimizer"]
    assert optimizer["state"].keys() == expected_optimizer["state"].keys()
    for index, state in expected_optimizer["state"].items():
        assert torch.equal(optimizer["state"][index]["momentum_buffer"], state["momentum_buffer"]), index
    assert resumed["trainer"]["hooks"] == uninterrupted["trainer"]["hooks"]  # the lr scheduler


def test_interrupted_write_leaves_last_checkpoint_on_a_complete_file(tmp_path, monkeypatch):
    model = build_model(small_cfg())
    checkpointer = EFLCheckpointer(model, save_dir=str(tmp_path))
    checkpointer.save("model_0000009")
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"

    def interrupted_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_0000009")  # even overwriting the file last_checkpoint names
    monkeypatch.undo()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    restored = build_model(small_cfg())
    EFLCheckpointer(restored, save_dir=str(tmp_path)).resume_or_load("", resume=True)
    for key, value in model.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key


def saved_models(save_dir, *names):
    """Checkpoints of differently initialised models; returns their state dicts."""
    states = []
    for seed, name in enumerate(names):
        torch.manual_seed(seed)
        model = build_model(small_cfg())
        EFLCheckpointer(model, save_dir=str(save_dir)).save(name)
        states.append(model.state_dict())
    return states


def assert_holds(model, state):
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_resume_passes_over_a_truncated_newest_checkpoint(tmp_path, caplog):
    older, _ = saved_models(tmp_path, "model_0000001", "model_0000003")
    newest = tmp_path / "model_0000003.pth"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    model = build_model(small_cfg())
    with caplog.at_level(logging.WARNING):
        EFLCheckpointer(model, save_dir=str(tmp_path)).resume_or_load("", resume=True)
    assert_holds(model, older)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(str(newest) in m and "truncated" in m for m in warnings), warnings


def test_resume_when_last_checkpoint_names_a_missing_file(tmp_path, caplog):
    first, second = saved_models(tmp_path, "model_0000001", "model_0000003")
    (tmp_path / "model_0000003.pth").unlink()
    model = build_model(small_cfg())
    with caplog.at_level(logging.WARNING):
        EFLCheckpointer(model, save_dir=str(tmp_path)).resume_or_load("", resume=True)
    assert_holds(model, first)
    assert any("model_0000003.pth, which does not exist" in r.getMessage() for r in caplog.records)

    (tmp_path / "model_0000001.pth").write_bytes(b"")
    with pytest.raises(ConfigError, match="no readable checkpoint"):
        EFLCheckpointer(build_model(small_cfg()), save_dir=str(tmp_path)).resume_or_load("", resume=True)


def test_temporary_files_are_unique_to_the_process(tmp_path, monkeypatch):
    written = []
    save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: (written.append(f.name), save(obj, f, *a, **k)))
    EFLCheckpointer(build_model(small_cfg()), save_dir=str(tmp_path)).save("model_0000009")
    assert len(written) == 1 and f"-{os.getpid()}" in os.path.basename(written[0])
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]


def test_weights_without_efl_state_load_with_one_message(tmp_path, caplog):
    focal = build_model(small_cfg("MODEL.META_ARCHITECTURE", "RetinaNet"))
    DetectionCheckpointer(focal, save_dir=str(tmp_path)).save("focal")
    efl = build_model(small_cfg())
    with caplog.at_level("WARNING"):
        EFLCheckpointer(efl).load(str(tmp_path / "focal.pth"))
    messages = [r.getMessage() for r in caplog.records if "EFL state" in r.getMessage()]
    assert len(messages) == 1 and "starts as focal loss" in messages[0] and "trained without EFL" in messages[0]
    others = [r.getMessage() for r in caplog.records if "EFL state" not in r.getMessage()]
    assert not any("cls_loss" in m or "loss_normalizer" in m for m in others), others
    assert torch.all(efl.cls_loss.pos_neg == 1) and efl.loss_normalizer == 100.0
    for key, value in focal.state_dict().items():
        assert torch.equal(efl.state_dict()[key], value), key


def test_an_error_inside_the_worker_processes_stops_in_one_line(tmp_path):
    """Found only inside the 2 workers (each reads the checkpoints): reported once, as one line."""
    saved_models(tmp_path, "model_0000001")
    (tmp_path / "model_0000001.pth").write_bytes(b"PK\x03\x04 not all there")
    run = subprocess.run(
        command(tmp_path, 2, "TrainingSampler", "--resume"), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600
    )
    assert_stops_with(run, f"--resume: {tmp_path} has no readable checkpoint")


LAZY_EPOCHS = REPO / "tests" / "configs" / "fcos_tiny_epochs.py"


def lazy_command(output_dir, *flags):
    return [
        sys.executable, str(REPO / "train_net.py"), "--num-gpus", "2", "--config-file", str(LAZY_EPOCHS), *flags,
        f"train.output_dir={output_dir}",
    ]  # fmt: skip


def test_a_killed_lazy_config_run_resumed_ends_as_the_uninterrupted_one(tmp_path):
    """EFLFCOS from a LazyConfig, 2 gloo processes, counted in epochs over the ceil-enlarged list: the resumed run
    resolves the same schedule and ends bit for bit as the uninterrupted one."""
    killed = tmp_path / "killed"
    kill_after_first_checkpoint(lazy_command(killed), killed)
    resuming = run_to_the_end(*lazy_command(killed, "--resume"))
    uninterrupted = run_to_the_end(*lazy_command(tmp_path / "uninterrupted"))
    log = resuming.stdout + resuming.stderr
    assert int(re.search(r"Starting training from iteration (\d+)", log).group(1)) >= 2
    assert "Taking over" in log  # the killed run's lock on train.output_dir
    line = (
        "0.085 epochs of 189 images after repeat-factor enlargement (each image ceil(r) times) at batch 4 = 48 "
        "iterations per epoch, 4 iterations; LR steps at 2 (epoch 0.05); warm-up 1 iterations (0.03 epochs)"
    )
    for run in (resuming, uninterrupted):
        assert (run.stdout + run.stderr).count(line) == 1, (run.stdout + run.stderr)[-3000:]

    resumed = torch.load(killed / "model_final.pth", map_location="cpu", weights_only=True)
    expected = torch.load(tmp_path / "uninterrupted" / "model_final.pth", map_location="cpu", weights_only=True)
    assert resumed["iteration"] == expected["iteration"] == 3
    assert resumed["model"].keys() == expected["model"].keys()
    assert {"cls_loss.pos_grad", "cls_loss.neg_grad", "cls_loss.pos_neg", "loss_normalizer"} <= set(expected["model"])
    for key, value in expected["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    state, expected_state = resumed["trainer"]["optimizer"]["state"], expected["trainer"]["optimizer"]["state"]
    assert state.keys() == expected_state.keys()
    for index, value in expected_state.items():
        assert torch.equal(state[index]["momentum_buffer"], value["momentum_buffer"]), index
    assert resumed["trainer"]["hooks"] == expected["trainer"]["hooks"]  # the LR scheduler
