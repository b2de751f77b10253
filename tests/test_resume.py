"""Interrupt and --resume gives the run an uninterrupted one would have; checkpoints are written safely."""
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from conftest import DEMO_CONFIG, SMALL_OPTS, small_cfg
from efl.engine import EFLCheckpointer
from test_train_net import train_net

# Deterministic on the CPU: constant learning rate (no schedule that depends on MAX_ITER), no random flip (the
# augmentation's random state is not part of a checkpoint), no evaluation.
DETERMINISTIC = [
    "SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR", "SOLVER.STEPS", "(1000,)", "SOLVER.WARMUP_ITERS", "0",
    "INPUT.RANDOM_FLIP", "none", "SOLVER.CHECKPOINT_PERIOD", "1000", "DATASETS.TEST", "()",
]  # fmt: skip


def train(output_dir, iterations, *extra):
    run = train_net(
        "--config-file", DEMO_CONFIG, *extra, *SMALL_OPTS, *DETERMINISTIC,
        "SOLVER.MAX_ITER", iterations, "OUTPUT_DIR", output_dir,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return torch.load(output_dir / "model_final.pth", map_location="cpu", weights_only=False)


# The official repeat-factor sampling: with threshold 0.3 the test set's 120 images enlarge to 189 (each repeated
# ceil(r) times, 1 to 5), so 3 iterations of 4 images stop in the middle of the first enlarged epoch.
CEIL_REPEAT_FACTORS = [
    "DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler", "DATALOADER.REPEAT_THRESHOLD", "0.3",
    "DATALOADER.REPEAT_ROUNDING", "ceil",
]  # fmt: skip


@pytest.mark.parametrize("sampler", [[], CEIL_REPEAT_FACTORS], ids=["plain", "ceil_repeat_factors"])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, sampler):
    uninterrupted = train(tmp_path / "a", 6, *sampler)
    train(tmp_path / "b", 3, *sampler)
    resumed = train(tmp_path / "b", 6, "--resume", *sampler)

    assert resumed["iteration"] == uninterrupted["iteration"] == 5
    model, expected = resumed["model"], uninterrupted["model"]
    assert model.keys() == expected.keys()
    for key in ("cls_loss.pos_grad", "cls_loss.neg_grad", "cls_loss.pos_neg", "loss_normalizer"):
        assert key in model
    for key, value in expected.items():
        assert torch.equal(model[key], value), key
    optimizer = resumed["trainer"]["_trainer"]["optimizer"]
    expected_optimizer = uninterrupted["trainer"]["_trainer"]["optimizer"]
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


def test_weights_without_efl_state_load_with_one_message(tmp_path, caplog):
    focal = build_model(small_cfg("MODEL.META_ARCHITECTURE", "RetinaNet"))
    DetectionCheckpointer(focal, save_dir=str(tmp_path)).save("focal")
    efl = build_model(small_cfg())
    with caplog.at_level("WARNING"):
        EFLCheckpointer(efl).load(str(tmp_path / "focal.pth"))
    messages = [r.getMessage() for r in caplog.records if "EFL state" in r.getMessage()]
    assert len(messages) == 1 and "starts as focal loss" in messages[0]
    others = [r.getMessage() for r in caplog.records if "EFL state" not in r.getMessage()]
    assert not any("cls_loss" in m or "loss_normalizer" in m for m in others), others
    assert torch.all(efl.cls_loss.pos_neg == 1) and efl.loss_normalizer == 100.0
    for key, value in focal.state_dict().items():
        assert torch.equal(efl.state_dict()[key], value), key
