"""Converting the authors' released checkpoints, and the conventions of the detector that evaluates them."""
import re
from argparse import Namespace

import pytest
import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import ImageList

import convert_released_checkpoint
from conftest import REPO
from efl import add_efl_config, check, load
from efl.engine import run
from released_checkpoint import ConversionError, convert_state_dict, detect_layout, unwrap
from test_train_net import read_results

KEY_LISTS = {50: "up_efl_r50_keys.txt", 101: "up_efl_r101_keys.txt"}
# `key [shape]` of every tensor in the released files, in their order (established from the official code)
FIXTURES = REPO / "tests" / "fixtures"


def released_keys(depth):
    """(key, shape) of every tensor of the released file, in its order."""
    keys = []
    for line in (FIXTURES / KEY_LISTS[depth]).read_text().splitlines():
        key, shape = re.fullmatch(r"(\S+) \[(.*)\]", line.strip()).groups()
        keys.append((key, tuple(int(s) for s in shape.split(",") if s)))
    return keys


def synthetic_released_file(depth, num_classes=1203, seed=0):
    """A file with exactly the released keys and shapes, random values, wrapped as the official saver does."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in released_keys(depth):
        if num_classes != 1203:
            shape = tuple(2 * num_classes if s == 2406 else num_classes if s == 1203 else s for s in shape)
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):  # a variance: positive
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:  # small enough that a forward pass stays finite
            state[key] = torch.randn(shape, generator=g) * 0.05
    # the two stem registrations hold the same tensors; the anchors of a class share its prior
    for alias, canonical in (("backbone.conv1.", "backbone.layer0.0."), ("backbone.bn1.", "backbone.layer0.1.")):
        for key in list(state):
            if key.startswith(alias):
                state[key] = state[canonical + key[len(alias):]].clone()
    prior = torch.randn(num_classes, generator=g) - 4.0
    state["roi_head.cls_subnet_pred.bias"] = prior.repeat(2) + 0.05 * torch.randn(2 * num_classes, generator=g)
    state["post_process.cls_loss.pos_neg"] = torch.rand(num_classes, generator=g)
    wrapped = {f"module.{k}": v for k, v in state.items()}
    return {"model": wrapped, "epoch": 24, "iter": 150000, "optimizer": {"state": {}}, "metric": 27.5}, state


def released_model(depth, *opts):
    cfg = get_cfg()
    add_efl_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / "LVISv1" / f"released_improved_R_{depth}.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    if cfg.MODEL.RETINANET.NUM_CLASSES != 1203:
        cfg.merge_from_list(["DATASETS.TRAIN", ("efl_synth_test_train",), "DATASETS.TEST", ("efl_synth_test_val",)])
    return build_model(cfg).eval()


@pytest.mark.parametrize("depth", [50, 101])
def test_released_keys_convert_and_load_with_nothing_missing_or_left_over(depth):
    checkpoint, source = synthetic_released_file(depth)
    converted, layout = convert_state_dict(unwrap(checkpoint))
    assert layout == "anchor-first"
    model = released_model(depth)
    result = model.load_state_dict(converted, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []

    mapping = {
        "backbone.layer0.0.weight": "backbone.bottom_up.stem.conv1.weight",
        "backbone.layer0.1.running_var": "backbone.bottom_up.stem.conv1.norm.running_var",
        "backbone.layer3.5.bn2.weight": "backbone.bottom_up.res4.5.conv2.norm.weight",
        "backbone.layer4.0.downsample.0.weight": "backbone.bottom_up.res5.0.shortcut.weight",
        "neck.c5_lateral.weight": "backbone.fpn_lateral5.weight",
        "neck.p4_conv.bias": "backbone.fpn_output4.bias",
        "neck.p6_conv.weight": "backbone.top_block.p6.weight",
        "neck.p7_conv.bias": "backbone.top_block.p7.bias",
        "roi_head.cls_subnet.10.weight": "head.cls_subnet.10.weight",
        "roi_head.box_subnet.9.weight": "head.bbox_subnet.9.weight",
        "roi_head.cls_subnet_pred.weight": "head.cls_score.weight",
        "roi_head.box_subnet_pred.bias": "head.bbox_pred.bias",
        "roi_head.iou_pred.weight": "head.iou_pred.weight",
        "post_process.cls_loss.pos_neg": "cls_loss.pos_neg",
    }
    for released, ours in mapping.items():
        assert torch.equal(model.state_dict()[ours], source[released]), released
    used = {k for k in source if not k.endswith("num_batches_tracked") and not k.startswith(("backbone.conv1", "backbone.bn1"))}
    assert len(converted) == len(used)
    assert sorted(source[k].sum().item() for k in used) == sorted(v.sum().item() for v in converted.values())
    # the towers' convs have no bias, in the released files and in the model
    for tower in ("cls_subnet", "bbox_subnet"):
        for index in (0, 3, 6, 9):
            assert getattr(model.head, tower)[index].bias is None and f"head.{tower}.{index}.bias" not in converted


def test_unplaceable_keys_and_disagreeing_stems_are_errors():
    _, source = synthetic_released_file(50, num_classes=8)
    with pytest.raises(ConversionError, match="roi_head.extra_conv.weight"):
        convert_state_dict({**source, "roi_head.extra_conv.weight": torch.zeros(1)})
    bad = dict(source)
    bad["backbone.conv1.weight"] = bad["backbone.conv1.weight"] + 1
    with pytest.raises(ConversionError, match="twin"):
        convert_state_dict(bad)
    assert len(unwrap({"state_dict": {"module.a": torch.zeros(1)}})) == 1
    with pytest.raises(ConversionError, match="no state_dict"):
        unwrap({"epoch": 3})


def test_layout_detection_and_reorder_give_identical_outputs():
    num_classes = 8
    _, source = synthetic_released_file(50, num_classes=num_classes, seed=3)
    anchor_first, _ = convert_state_dict(source)
    model = released_model(50, "MODEL.RETINANET.NUM_CLASSES", num_classes)
    model.load_state_dict(anchor_first)
    x = torch.randn(1, 256, 6, 6)
    expected = model.head([x])[0][0]

    class_first = dict(source)
    for key in ("roi_head.cls_subnet_pred.weight", "roi_head.cls_subnet_pred.bias"):
        t = source[key]
        class_first[key] = t.reshape(2, num_classes, *t.shape[1:]).transpose(0, 1).reshape(t.shape)  # c*2 + a
    assert detect_layout(source["roi_head.cls_subnet_pred.bias"])[0] == "anchor-first"
    assert detect_layout(class_first["roi_head.cls_subnet_pred.bias"])[0] == "class-first"
    reordered, layout = convert_state_dict(class_first)
    assert layout == "class-first"
    model.load_state_dict(reordered)
    assert torch.equal(model.head([x])[0][0], expected)
    misread, _ = convert_state_dict(class_first, layout="anchor-first")
    model.load_state_dict(misread)
    assert not torch.equal(model.head([x])[0][0], expected)


def test_p3_anchors_padding_and_p6_p7_follow_the_released_conventions():
    model = released_model(50, "MODEL.RETINANET.NUM_CLASSES", 8)
    # P3 (stride 8): the first location is centred at (4, 4); its anchors are 48 then 64 wide
    features = [torch.zeros(1, 256, 128 // s, 128 // s) for s in (8, 16, 32, 64, 128)]
    p3 = model.anchor_generator(features)[0].tensor
    torch.testing.assert_close(p3[:2], torch.tensor([[-20.0, -20.0, 28.0, 28.0], [-28.0, -28.0, 36.0, 36.0]]))
    torch.testing.assert_close(p3[2], torch.tensor([-12.0, -20.0, 36.0, 28.0]))  # next location, x + 8
    # padding to 64, not to P7's stride 128
    assert model.backbone.size_divisibility == 64
    sizes = [ImageList.from_tensors([torch.zeros(3, h, w)], 64).tensor.shape[-2:] for h, w in ((100, 130), (64, 65))]
    assert [tuple(s) for s in sizes] == [(128, 192), (64, 128)]
    assert type(model.backbone.top_block).__name__ == "LateralP6P7"


def test_per_level_cap_clipping_and_300_detections():
    model = released_model(50, "MODEL.RETINANET.NUM_CLASSES", 8)
    anchors = model.anchor_generator([torch.zeros(1, 256, 2, 3)])[0]  # 12 anchors
    scores = torch.rand(12, 8)
    deltas = torch.zeros(12, 4)
    deltas[:, 2:] = 3.0  # boxes e^3 times the anchors: far outside a 16 x 24 image
    kept = model._decode_per_level_predictions(anchors, scores, deltas, 0.0, 6000, (16, 24))
    assert len(kept) == 12  # min(6000, H x W x A) of the 96 (anchor, class) pairs
    boxes = kept.pred_boxes.tensor
    assert boxes[:, [0, 2]].min() >= 0 and boxes[:, [0, 2]].max() <= 24 and boxes[:, [1, 3]].max() <= 16
    assert model.max_detections_per_image == 300 and model.test_nms_thresh == 0.5 and model.test_score_thresh == 0.0


def test_eval_only_on_a_converted_checkpoint(tmp_path, capsys):
    """The converter's command line, then what each process of train_net.py --eval-only runs (efl.engine.run)."""
    checkpoint, _ = synthetic_released_file(50, num_classes=8, seed=5)
    torch.save(checkpoint, tmp_path / "released.pth")
    convert_released_checkpoint.main([str(tmp_path / "released.pth"), str(tmp_path / "converted.pth")])
    assert "classification channels: anchor-first" in capsys.readouterr().out
    config = str(REPO / "configs" / "LVISv1" / "released_improved_R_50.yaml")
    opts = [
        "MODEL.WEIGHTS", str(tmp_path / "converted.pth"), "MODEL.DEVICE", "cpu", "MODEL.RETINANET.NUM_CLASSES", "8",
        "DATASETS.TEST", "('efl_synth_test_val',)", "DATASETS.TRAIN", "('efl_synth_test_train',)",
        "INPUT.MIN_SIZE_TEST", "128", "TEST.DETECTIONS_PER_IMAGE", "100", "OUTPUT_DIR", str(tmp_path / "out"),
    ]  # fmt: skip
    recipe = load(config, opts)
    check(recipe, eval_only=True)
    run(Namespace(eval_only=True, resume=False, trust_pickle=False, config_file=config, opts=opts), recipe)
    results = read_results(tmp_path / "out")
    assert all(0.0 <= results[m] <= 100.0 for m in ("AP", "APr", "APc", "APf")), results
