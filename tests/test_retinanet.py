"""EFLRetinaNet: attribution of gradients to (anchor, class) cells, logging, and checkpoints."""
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from conftest import small_cfg
from efl import EFLRetinaNet, lvis_frequency_groups

NUM_CLASSES = 8


def make_inputs(boxes_per_image, size=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for boxes, classes in boxes_per_image:
        instances = Instances((size, size))
        instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.gt_classes = torch.tensor(classes, dtype=torch.long)
        inputs.append({"image": torch.rand(3, size, size, generator=g) * 255, "instances": instances})
    return inputs


def build(*opts):
    torch.manual_seed(0)
    model = build_model(small_cfg(*opts))
    assert isinstance(model, EFLRetinaNet)
    return model.train()


def capture_head_logits(model):
    """Keep the per-level (N, A*C, H, W) classification outputs of the head, with their gradients."""
    captured = []
    forward = model.head.forward

    def forward_and_keep(features):
        logits, deltas = forward(features)
        for x in logits:
            x.retain_grad()
        captured.extend(logits)
        return logits, deltas

    model.head.forward = forward_and_keep
    return captured


CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"))


TWO_SIZES = [[16, 24], [32, 48], [64, 96], [128, 192], [256, 384]]
ANCHORS = {  # anchors per location -> config: 2 as the improved baseline, 3 and 9 as RetinaNet
    2: ("MODEL.ANCHOR_GENERATOR.SIZES", TWO_SIZES, "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", [[1.0]]),
    3: ("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", [[1.0]]),
    9: ("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", [[0.5, 1.0, 2.0]]),
}


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("num_anchors", ANCHORS)
def test_statistics_credit_each_gradient_to_its_own_cell(num_anchors, device):
    model = build(*ANCHORS[num_anchors], "MODEL.DEVICE", device)
    logits = capture_head_logits(model)
    inputs = make_inputs(
        [
            ([[10, 10, 40, 50], [50, 20, 90, 60], [5, 60, 30, 90]], [1, 4, 6]),
            ([[20, 20, 80, 80], [0, 0, 24, 24]], [4, 0]),
        ]
    )
    with EventStorage():
        model(inputs)["loss_cls"].backward()

    # Label of every anchor, in the anchor generator's order: level, then (y, x, anchor).
    images = model.preprocess_image(inputs)
    features = [model.backbone(images.tensor)[f] for f in model.head_in_features]
    anchors = model.anchor_generator(features)
    labels = torch.stack(model.label_anchors(anchors, [x["instances"].to(device) for x in inputs])[0]).cpu()
    assert (labels == -1).any() and ((labels >= 0) & (labels < NUM_CLASSES)).sum() > 5

    pos = torch.zeros(NUM_CLASSES, dtype=torch.float64)
    neg = torch.zeros(NUM_CLASSES, dtype=torch.float64)
    start = 0
    for x in logits:  # (N, A*C, H, W): channel a*C + c of location (y, x) is class c of anchor a there
        n, _, h, w = x.shape
        level = labels[:, start : start + h * w * num_anchors].reshape(n, h, w, num_anchors)
        start += h * w * num_anchors
        grad = x.grad.double().cpu().reshape(n, num_anchors, NUM_CLASSES, h, w)
        for a in range(num_anchors):
            lab = level[..., a]  # (N, H, W)
            for c in range(NUM_CLASSES):
                g = grad[:, a, c].abs()
                pos[c] += g[lab == c].sum()
                neg[c] += g[(lab >= 0) & (lab != c)].sum()
    assert start == labels.shape[1]
    pos_grad, neg_grad = model.cls_loss.pos_grad.cpu(), model.cls_loss.neg_grad.cpu()
    torch.testing.assert_close(pos_grad.double(), pos, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(neg_grad.double(), neg, rtol=1e-5, atol=1e-12)
    assert (pos_grad[[0, 1, 4, 6]] > 0).all()
    assert (pos_grad[[2, 3, 5, 7]] == 0).all()


def test_images_without_annotations_give_finite_loss_and_no_positive_statistics():
    model = build()
    with EventStorage():
        losses = model(make_inputs([([], []), ([], [])]))
        sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box_reg"] == 0
    assert torch.all(model.cls_loss.pos_grad == 0) and torch.all(model.cls_loss.neg_grad > 0)


def test_focusing_factors_of_each_frequency_group_reach_event_storage():
    """The training set's frequency groups, given to the detector as a value (as the engine gives them)."""
    groups = lvis_frequency_groups("efl_synth_test_train", NUM_CLASSES)
    torch.manual_seed(0)
    model = EFLRetinaNet(small_cfg(), frequency_groups=groups).train()
    counts = [c["image_count"] for c in MetadataCatalog.get("efl_synth_test_train").class_image_count]
    assert groups == [0 if n <= 10 else 1 if n <= 100 else 2 for n in counts]
    assert sorted(set(groups)) == [0, 1, 2]
    pos_neg = torch.linspace(0, 1, NUM_CLASSES)
    model.cls_loss.pos_neg.copy_(pos_neg)
    gamma = model.cls_loss.focusing_factors()
    with EventStorage() as storage:  # logged before the step updates the statistics
        model(make_inputs([([[10, 10, 40, 50]], [1])]))
        latest = {k: v for k, (v, _) in storage.latest().items()}
    for g, name in enumerate(["rare", "common", "frequent"]):
        members = [c for c in range(NUM_CLASSES) if groups[c] == g]
        assert latest[f"efl/gamma_{name}"] == pytest.approx(gamma[members].mean().item())
        assert latest[f"efl/g_{name}"] == pytest.approx(pos_neg[members].mean().item())
    assert latest["efl/gamma_mean"] == pytest.approx(gamma.mean().item())
    assert latest["efl/g_mean"] == pytest.approx(pos_neg.mean().item())


def test_frequency_groups_must_match_the_number_of_classes():
    with pytest.raises(ValueError, match="'efl_synth_test_train' has 8 categories but the model has 36 classes"):
        lvis_frequency_groups("efl_synth_test_train", 36)
    assert lvis_frequency_groups("coco_2017_train", 80) is None


def test_statistics_are_saved_and_restored_by_the_detectron2_checkpointer(tmp_path):
    model = build()
    with EventStorage():
        sum(model(make_inputs([([[10, 10, 40, 50]], [2])])).values()).backward()
    assert model.cls_loss.pos_grad[2] > 0
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    saved = {k: v.clone() for k, v in model.cls_loss.state_dict().items()}

    restored = build()
    assert torch.all(restored.cls_loss.pos_neg == 1)
    DetectionCheckpointer(restored).load(str(tmp_path / "model.pth"))
    for name, value in saved.items():
        assert torch.equal(getattr(restored.cls_loss, name), value), name
