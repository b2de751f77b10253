"""
Checkpoints are written safely, resuming passes over a checkpoint that cannot be read, and an error found only where
the worker processes read the checkpoints stops in one line. (Runs killed with SIGKILL and resumed: test_preemption*.py.)
"""
import logging
import os

import pytest
import torch

import warm_start
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from conftest import assert_stops_with, small_cfg, small_recipe
from efl import ConfigError
from efl.engine import EFLCheckpointer, build_training
from interruptions import ENV, yacs_command


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
    run = warm_start.run(yacs_command(tmp_path, 2, "--resume"), ENV)
    assert_stops_with(run, f"--resume: {tmp_path} has no readable checkpoint")


def test_checkpoints_written_before_version_0_2_resume(tmp_path):
    """detectron2's DefaultTrainer, which ran the yacs configs before, nested the step-running trainer's state
    ("_trainer"): such a checkpoint resumes at its iteration, with its optimizer state."""
    recipe = small_recipe("OUTPUT_DIR", tmp_path)
    model = recipe.build_model(None)
    optimizer = recipe.build_optimizer(model)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    state = {"model": model.state_dict(), "iteration": 4,
             "trainer": {"iteration": 4, "hooks": {}, "_trainer": {"optimizer": optimizer.state_dict()}}}  # fmt: skip
    torch.save(state, tmp_path / "model_0000004.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000004.pth")
    training = build_training(recipe, resume=True)
    assert training.start_iter == 5
    loaded = training.trainer.optimizer.state_dict()["state"]
    assert loaded.keys() == optimizer.state_dict()["state"].keys()
    for index, value in optimizer.state_dict()["state"].items():
        assert torch.equal(loaded[index]["momentum_buffer"], value["momentum_buffer"])
