"""
MODEL.EFL.RESET_STATISTICS (yacs) and train.reset_efl_statistics (LazyConfig), through the engine's own loading
code: the EFL statistics (and the moving-average normaliser) start afresh after loading weights to fine-tune from,
and are kept when a run resumes from its own checkpoint.
"""
import pytest
import torch

from detectron2.config import instantiate
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from conftest import REPO, small_cfg, small_recipe
from efl.config import LazyRecipe, load_lazy_config
from efl.engine import EFLCheckpointer, build_training
from test_fcos import BOXES as FCOS_BOXES
from test_fcos import make_inputs as make_fcos_inputs
from test_retinanet import make_inputs

TINY = REPO / "tests" / "configs" / "fcos_tiny.py"
STATISTICS = ("cls_loss.pos_grad", "cls_loss.neg_grad", "cls_loss.pos_neg", "loss_normalizer")


def trained(model, inputs, save_dir):
    """``model`` after one training step (statistics and normaliser moved), saved as save_dir/trained.pth and as
    the last checkpoint of save_dir, which --resume finds; returns its state."""
    with EventStorage():
        sum(model.train()(inputs).values()).backward()
    checkpointer = EFLCheckpointer(model, save_dir=str(save_dir))
    checkpointer.save("trained")
    checkpointer.save("model_0000001")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert (state["cls_loss.pos_neg"] < 1).any() and (state["cls_loss.neg_grad"] > 0).all()
    return state


def assert_loaded(model, state, reset, normalizer_start):
    loaded = model.state_dict()
    for key, value in state.items():
        if key not in STATISTICS:
            assert torch.equal(loaded[key], value), key  # the weights themselves are always loaded
    if reset:
        assert torch.all(loaded["cls_loss.pos_neg"] == 1) and torch.all(loaded["cls_loss.pos_grad"] == 0)
        assert torch.all(loaded["cls_loss.neg_grad"] == 0) and loaded["loss_normalizer"].item() == normalizer_start
    else:
        for key in STATISTICS:
            assert torch.equal(loaded[key], state[key]), key


@pytest.mark.parametrize("resume", [False, True])
def test_yacs_reset_statistics_after_loading_weights_not_on_resume(tmp_path, resume):
    torch.manual_seed(0)
    inputs = make_inputs([([[10, 10, 40, 50]], [1]), ([[20, 20, 80, 80]], [6])])
    state = trained(build_model(small_cfg()), inputs, tmp_path)
    recipe = small_recipe(
        "MODEL.WEIGHTS", tmp_path / "trained.pth", "MODEL.EFL.RESET_STATISTICS", "True",
        "OUTPUT_DIR", tmp_path if resume else tmp_path / "fine-tune",
    )  # fmt: skip
    training = build_training(recipe, resume=resume)
    assert (training.start_iter > 0) == resume
    assert_loaded(training.trainer.model, state, reset=not resume, normalizer_start=100.0)


@pytest.mark.parametrize("resume", [False, True])
def test_lazy_config_reset_statistics_after_loading_weights_not_on_resume(tmp_path, resume):
    cfg = load_lazy_config(str(TINY), ["dataloader.evaluator=null"])
    torch.manual_seed(0)
    state = trained(instantiate(cfg.model), make_fcos_inputs(FCOS_BOXES), tmp_path)
    output_dir = tmp_path if resume else tmp_path / "fine-tune"
    cfg = load_lazy_config(
        str(TINY),
        [f"train.init_checkpoint={tmp_path / 'trained.pth'}", "train.reset_efl_statistics=True",
         f"train.output_dir={output_dir}"],
    )  # fmt: skip
    training = build_training(LazyRecipe(cfg), resume=resume)
    assert (training.start_iter > 0) == resume
    assert_loaded(training.trainer.model, state, reset=not resume, normalizer_start=300.0)
