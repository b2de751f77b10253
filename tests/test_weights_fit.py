"""Weights must fit the model: --eval-only refuses others with one message; MODEL.ALLOW_PARTIAL_WEIGHTS loads what fits."""
import logging

import pytest
import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model

from conftest import REPO, SMALL_OPTS, small_cfg, small_recipe
from efl import add_efl_config
from efl.config import YACS_NAMES
from efl.engine import EFLCheckpointer, WeightsMismatchError, evaluate_weights

IMPROVED_CONFIG = REPO / "configs" / "Synthetic" / "improved_R_18_demo_efl.yaml"


def improved_model():
    cfg = get_cfg()
    add_efl_config(cfg)
    cfg.merge_from_file(str(IMPROVED_CONFIG))
    cfg.merge_from_list(SMALL_OPTS)
    return build_model(cfg)


@pytest.fixture(scope="module")
def improved_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("improved") / "improved.pth"
    torch.save({"model": improved_model().state_dict()}, path)
    return str(path)


def test_weights_of_another_architecture_are_refused_with_what_does_not_fit(improved_weights):
    with pytest.raises(WeightsMismatchError) as error:
        EFLCheckpointer(build_model(small_cfg()), names=YACS_NAMES).load(improved_weights)
    message = str(error.value)
    assert "\n" not in message and improved_weights in message
    assert "not in the model: 6 keys: head.iou_pred.{weight, bias}" in message  # grouped: the IoU branch, ...
    assert "backbone.top_block.p6.weight (64, 64, 3, 3) in the weights, (64, 512, 3, 3) in the model" in message
    assert "MODEL.ALLOW_PARTIAL_WEIGHTS True" in message and "focal" not in message


def test_weights_for_another_class_count_are_refused_with_the_shapes(tmp_path):
    source = build_model(small_cfg("MODEL.RETINANET.NUM_CLASSES", "5", "DATASETS.TRAIN", "()"))
    torch.save({"model": source.state_dict()}, tmp_path / "five.pth")
    with pytest.raises(WeightsMismatchError) as error:
        EFLCheckpointer(build_model(small_cfg())).load(str(tmp_path / "five.pth"))
    # 9 anchors per location (3 sizes x 3 ratios): 9 x 5 classifier channels in the weights, 9 x 8 in the model
    assert str(error.value).count(" in the weights, ") == 2 and "missing" not in str(error.value)
    assert "head.cls_score.weight (45, 64, 3, 3) in the weights, (72, 64, 3, 3) in the model" in str(error.value)


def test_partial_loading_when_allowed_says_what_it_did(improved_weights, caplog):
    model = build_model(small_cfg())
    with caplog.at_level(logging.WARNING):
        EFLCheckpointer(model, allow_partial=True).load(improved_weights)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("efl")]
    assert any("loaded partially" in m and "keep their initial values" in m for m in messages), messages
    efl_state = [m for m in messages if "EFL state" in m]
    assert len(efl_state) == 1 and "loss_normalizer" in efl_state[0] and "without EFL" not in efl_state[0]
    source = torch.load(improved_weights, weights_only=True)["model"]
    assert torch.equal(model.state_dict()["cls_loss.pos_neg"], source["cls_loss.pos_neg"])


def test_eval_only_with_weights_that_do_not_fit_stops_before_evaluating(improved_weights, tmp_path):
    """Where each process of train_net.py --eval-only loads the weights (its command line prints the message as one
    line, as test_train_net.py's corrupt weights show)."""
    recipe = small_recipe("MODEL.WEIGHTS", improved_weights, "OUTPUT_DIR", tmp_path)
    with pytest.raises(WeightsMismatchError, match="do not fit the model.*MODEL.ALLOW_PARTIAL_WEIGHTS True"):
        evaluate_weights(recipe, resume=False)
    assert not (tmp_path / "inference").exists()


@pytest.mark.parametrize(
    "name,normaliser",
    [
        ("EFLRetinaNet", "the loss normaliser, a moving average of the positive count, starts again from 100"),
        ("EFLFCOS", "the loss normaliser, a moving average of the positive count, starts again from 300"),
        ("ImprovedRetinaNet", None),  # normalised by each step's positive count: nothing to start again
    ],
)
def test_weights_without_efl_state_say_what_starts_afresh_in_this_model(name, normaliser, tmp_path, caplog):
    from test_fcos import build as build_fcos

    build = {"EFLRetinaNet": lambda: build_model(small_cfg()), "EFLFCOS": build_fcos, "ImprovedRetinaNet": improved_model}
    state = {k: v for k, v in build[name]().state_dict().items() if "cls_loss." not in k and k != "loss_normalizer"}
    torch.save({"model": state}, tmp_path / "focal.pth")
    with caplog.at_level(logging.WARNING):
        EFLCheckpointer(build[name]()).load(str(tmp_path / "focal.pth"))
    (message,) = [r.getMessage() for r in caplog.records if "EFL state" in r.getMessage()]
    assert "The EFL statistics start afresh (g = 1, so EFL starts as focal loss)" in message
    if normaliser:
        assert message.endswith(f"; {normaliser}.")
    else:
        assert "normaliser" not in message and "loss_normalizer" not in message
