"""Every config parses, and the LVIS v1 configs match the recipes they claim to reproduce."""
from pathlib import Path

import pytest
import torch
import yaml

from detectron2.config import get_cfg

from conftest import REPO
from efl import add_efl_config

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
LVIS = REPO / "configs" / "LVISv1"
EPOCH = 100170 / 16  # LVIS v1 train images / batch 16


def load(path: Path):
    cfg = get_cfg()
    add_efl_config(cfg)
    cfg.merge_from_file(str(path))
    return cfg


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_config_parses(path):
    cfg = load(path)
    assert cfg.MODEL.META_ARCHITECTURE in ("RetinaNet", "EFLRetinaNet", "ImprovedRetinaNet")


def _leaves(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _plain(value):
    return tuple(_plain(v) for v in value) if isinstance(value, (list, tuple)) else value


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_config_states_only_what_differs_from_its_base(path):
    """A key a file sets differs from what its _BASE_ gives (detectron2's and add_efl_config's defaults for a file
    without one): no default restated. VERSION, the format of every base file, excepted."""
    with open(path) as f:
        data = yaml.safe_load(f)
    base = get_cfg()
    add_efl_config(base)
    if "_BASE_" in data:
        base.merge_from_file(str(path.parent / data.pop("_BASE_")))
    restated = []
    for key, value in _leaves(data):
        inherited = base
        for part in key.split("."):
            inherited = inherited[part]
        value = base._decode_cfg_value(value) if isinstance(value, str) else value
        if key != "VERSION" and _plain(value) == _plain(inherited):
            restated.append(key)
    assert restated == []


def lvis_data(cfg):
    assert cfg.MODEL.RETINANET.NUM_CLASSES == 1203
    assert cfg.DATASETS.TRAIN == ("lvis_v1_train",) and cfg.DATASETS.TEST == ("lvis_v1_val",)
    assert cfg.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler"
    assert cfg.DATALOADER.REPEAT_THRESHOLD == 0.001
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 300
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (640, 672, 704, 736, 768, 800)
    assert cfg.INPUT.MAX_SIZE_TRAIN == 1333 and cfg.INPUT.MIN_SIZE_TEST == 800 and cfg.INPUT.MAX_SIZE_TEST == 1333
    assert cfg.SOLVER.IMS_PER_BATCH == 16


RETINANET_CONFIGS = sorted(LVIS.glob("retinanet_*.yaml"))
IMPROVED_CONFIGS = sorted(LVIS.glob("improved_baseline_*.yaml"))


@pytest.mark.parametrize("path", RETINANET_CONFIGS, ids=lambda p: p.stem)
def test_retinanet_lvis_configs(path):
    cfg = load(path)
    lvis_data(cfg)
    # detectron2's way: 24 epochs of the plain 100,170 images, in iterations; stochastic repeat-factor rounding
    assert (cfg.SOLVER.MAX_EPOCHS, cfg.DATALOADER.REPEAT_ROUNDING) == (0, "stochastic")
    assert cfg.SOLVER.MAX_ITER == round(24 * EPOCH)
    assert tuple(cfg.SOLVER.STEPS) == (round(16 * EPOCH), round(22 * EPOCH))
    assert cfg.MODEL.RETINANET.SCORE_THRESH_TEST == 0.0001
    depth = 101 if "_R_101_" in path.stem else 50
    assert cfg.MODEL.RESNETS.DEPTH == depth and cfg.MODEL.WEIGHTS.endswith(f"R-{depth}.pkl")
    expected = "EFLRetinaNet" if path.stem.endswith("_efl") else "RetinaNet"
    assert cfg.MODEL.META_ARCHITECTURE == expected
    assert (cfg.MODEL.EFL.GAMMA_B, cfg.MODEL.EFL.SCALE, cfg.MODEL.EFL.ALPHA) == (2.0, 8.0, 0.25)


# One row of the reproduction table per config: depth, loss, EFL's gamma_b / s / focusing / weighting.
IMPROVED_ROWS = {
    "improved_baseline_R_50_24ep_efl": (50, "efl", 2.0, 8.0, True, True),
    "improved_baseline_R_50_24ep_focal": (50, "focal", 2.0, 8.0, True, True),
    "improved_baseline_R_50_24ep_eqfl": (50, "eqfl", 2.0, 8.0, True, True),
    "improved_baseline_R_101_24ep_efl": (101, "efl", 2.0, 8.0, True, True),
    "improved_baseline_R_101_24ep_focal": (101, "focal", 2.0, 8.0, True, True),
    "improved_baseline_R_101_24ep_eqfl": (101, "eqfl", 2.0, 8.0, True, True),
    "improved_baseline_R_50_24ep_efl_focusing_only": (50, "efl", 2.0, 8.0, True, False),
    "improved_baseline_R_50_24ep_efl_weighting_only": (50, "efl", 2.0, 8.0, False, True),
    "improved_baseline_R_50_24ep_efl_s0": (50, "efl", 2.0, 0.0, True, True),
    "improved_baseline_R_50_24ep_efl_s4": (50, "efl", 2.0, 4.0, True, True),
    "improved_baseline_R_50_24ep_efl_s12": (50, "efl", 2.0, 12.0, True, True),
    "improved_baseline_R_50_24ep_efl_gamma_b1": (50, "efl", 1.0, 8.0, True, True),
    "improved_baseline_R_50_24ep_efl_gamma_b3": (50, "efl", 3.0, 8.0, True, True),
}


def test_the_reproduction_table_has_a_config_per_row():
    assert {p.stem for p in IMPROVED_CONFIGS} == set(IMPROVED_ROWS)


@pytest.mark.parametrize("path", IMPROVED_CONFIGS, ids=lambda p: p.stem)
def test_improved_baseline_configs_follow_the_recipe(path):
    cfg = load(path)
    lvis_data(cfg)
    depth, loss, gamma_b, scale, focusing, weighting = IMPROVED_ROWS[path.stem]
    model = cfg.MODEL
    assert model.META_ARCHITECTURE == "ImprovedRetinaNet"
    assert model.RESNETS.DEPTH == depth and not model.RESNETS.STRIDE_IN_1X1 and model.RESNETS.NORM == "FrozenBN"
    assert model.BACKBONE.FREEZE_AT == 2 and model.BACKBONE.NAME == "build_retinanet_resnet_fpn_lateral_p6p7_backbone"
    assert cfg.INPUT.FORMAT == "RGB" and cfg.INPUT.RANDOM_FLIP == "horizontal"
    assert tuple(model.PIXEL_MEAN) == (123.675, 116.28, 103.53) and tuple(model.PIXEL_STD) == (58.395, 57.12, 57.375)
    assert model.FPN.OUT_CHANNELS == 256 and tuple(model.FPN.IN_FEATURES) == ("res3", "res4", "res5")
    assert model.FPN.SIZE_DIVISIBILITY == 64
    strides = (8, 16, 32, 64, 128)
    assert [list(s) for s in model.ANCHOR_GENERATOR.SIZES] == [[6 * s, 8 * s] for s in strides]
    assert [list(a) for a in model.ANCHOR_GENERATOR.ASPECT_RATIOS] == [[1.0]]
    assert model.ANCHOR_GENERATOR.OFFSET == 0.5
    head = model.RETINANET
    assert (head.NUM_CONVS, head.NORM, head.PRIOR_PROB) == (4, "GN", 0.001)
    assert tuple(head.BBOX_REG_WEIGHTS) == (1.0, 1.0, 1.0, 1.0)
    assert (head.SCORE_THRESH_TEST, head.TOPK_CANDIDATES_TEST, head.NMS_THRESH_TEST) == (0.0, 6000, 0.5)
    assert (head.FOCAL_LOSS_ALPHA, head.FOCAL_LOSS_GAMMA) == (0.25, 2.0)
    improved = model.IMPROVED_BASELINE
    assert (model.EFL.LOSS, improved.ATSS_TOPK, improved.IOU_BRANCH, improved.IOU_WEIGHTED_BOX_LOSS) == (
        loss, 18, True, True
    )
    assert improved.TOWER_CONV_BIAS is False
    efl = model.EFL
    assert (efl.GAMMA_B, efl.SCALE, efl.ALPHA, efl.FOCUSING_FACTOR, efl.WEIGHTING_FACTOR) == (
        gamma_b, scale, 0.25, focusing, weighting
    )
    # the official schedule: epochs over the list enlarged by ceil-rounded repeat factors, resolved at start
    assert cfg.DATALOADER.REPEAT_ROUNDING == "ceil"
    solver = cfg.SOLVER
    assert (solver.MAX_EPOCHS, tuple(solver.EPOCH_STEPS), solver.WARMUP_EPOCHS) == (24, (16, 22), 1.0)
    assert (solver.LR_SCHEDULER_NAME, solver.WARMUP_METHOD) == ("WarmupMultiStepLR", "linear")
    assert solver.WARMUP_FACTOR == 0.001
    assert (solver.BASE_LR, solver.MOMENTUM, solver.GAMMA) == (0.02, 0.9, 0.1)
    # weight decay 1e-4 on everything, GroupNorm included: one parameter group (see the test below)
    assert (solver.WEIGHT_DECAY, solver.WEIGHT_DECAY_NORM, solver.WEIGHT_DECAY_BIAS) == (0.0001, 0.0001, None)
    assert solver.BIAS_LR_FACTOR == 1.0
    clip = solver.CLIP_GRADIENTS
    assert (clip.ENABLED, clip.CLIP_TYPE, clip.CLIP_VALUE, clip.NORM_TYPE) == (True, "full_model", 35.0, 2.0)
    assert cfg.OUTPUT_DIR.endswith(path.stem)


def test_the_improved_recipe_decays_every_parameter_alike_group_norm_included():
    from detectron2.modeling import build_model
    from detectron2.solver import build_optimizer

    cfg = load(LVIS / "improved_baseline_R_50_24ep_efl.yaml")
    # a small model of the same kinds of layers (frozen BN backbone, GroupNorm head); the grouping depends only
    # on the layers' kinds and the SOLVER keys. Full-model clipping is a hook of train_net.py, not the optimizer's.
    cfg.merge_from_list(
        ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
         "MODEL.RETINANET.NUM_CLASSES", 8, "MODEL.RETINANET.NUM_CONVS", 1, "MODEL.FPN.OUT_CHANNELS", 64,
         "MODEL.WEIGHTS", "", "DATASETS.TRAIN", ("efl_synth_test_train",), "SOLVER.CLIP_GRADIENTS.ENABLED", False]
    )  # fmt: skip
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    # detectron2 puts the norms' parameters in a group of their own; with the same values, which updates them
    # exactly as the official single group does
    settings = {(g["lr"], g["weight_decay"], g["momentum"], g["nesterov"]) for g in optimizer.param_groups}
    assert settings == {(0.02, 0.0001, 0.9, False)}
    norms = [p for m in model.head.modules() if isinstance(m, torch.nn.GroupNorm) for p in m.parameters()]
    optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert norms and {id(p) for p in norms} <= optimized
    assert optimized == {id(p) for p in model.parameters() if p.requires_grad}
    assert model.head.cls_subnet[0].bias is None and model.head.bbox_subnet[0].bias is None
    assert model.head.cls_score.bias is not None and model.head.iou_pred.bias is not None


def test_configs_name_the_authors_numbers_where_the_facts_have_them():
    reported = {
        "improved_baseline_R_50_24ep_efl": "AP 27.5, APr 20.2, APc 26.1, APf 32.4",
        "improved_baseline_R_101_24ep_efl": "AP 29.2, APr 23.5, APc 27.4, APf 33.8",
    }
    for path in IMPROVED_CONFIGS:
        header = path.read_text().split("_BASE_")[0]
        assert "Reported by the authors" in header
        if path.stem in reported:
            assert reported[path.stem] in header
