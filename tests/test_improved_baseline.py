"""The improved baseline: neck, IoU-branch targets, weighted GIoU, test scores, and gradient clipping."""
import pytest
import torch
import torch.nn.functional as F

from detectron2.modeling import build_model
from detectron2.structures import Boxes, pairwise_iou
from detectron2.utils.events import EventStorage

from conftest import REPO, SMALL_OPTS, small_cfg
from efl import EqualizedFocalLoss, EqualizedQualityFocalLoss, FullModelGradientClipping, ImprovedRetinaNet
from efl.modeling import atss_assign
from test_retinanet import make_inputs

IMPROVED_CONFIG = REPO / "configs" / "Synthetic" / "improved_R_18_demo_efl.yaml"


def build(*opts):
    cfg = small_cfg(*opts)
    cfg.merge_from_file(str(IMPROVED_CONFIG))
    cfg.merge_from_list(SMALL_OPTS + list(opts))
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model, ImprovedRetinaNet)
    return model.train()


def constant_head(model, cls_bias, iou_bias):
    """Zero the head's output convs: deltas 0 (boxes = anchors), constant class and IoU logits."""
    head = model.head
    for conv, bias in ((head.cls_score, cls_bias), (head.bbox_pred, 0.0), (head.iou_pred, iou_bias)):
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.constant_(conv.bias, bias)


def test_p6_comes_from_the_c5_lateral_and_p7_has_no_relu():
    model = build().eval()
    backbone = model.backbone
    x = torch.randn(1, 3, 96, 96)
    features = backbone(x)
    c5 = backbone.bottom_up(x)["res5"]
    p6 = backbone.top_block.p6(backbone.fpn_lateral5(c5))
    torch.testing.assert_close(features["p6"], p6)
    torch.testing.assert_close(features["p7"], backbone.top_block.p7(p6))
    assert (p6 < 0).any() and not torch.allclose(features["p7"], backbone.top_block.p7(F.relu(p6)))
    assert not any("top_block.lateral" in k for k in backbone.state_dict())


def test_iou_targets_weighted_giou_and_iou_branch_on_known_boxes():
    # With zero deltas every predicted box is its anchor, so the IoU targets are the anchors' IoUs with their
    # ATSS-assigned boxes; with a constant IoU logit b, loss_iou = sum(softplus(b) - t b) / P.
    model = build()
    b = 0.7
    constant_head(model, cls_bias=-2.0, iou_bias=b)
    inputs = make_inputs([([[10, 10, 40, 50], [50, 20, 90, 60]], [1, 4]), ([[20, 20, 80, 80]], [4])])
    with EventStorage():
        losses = model(inputs)
        images = model.preprocess_image(inputs)
        features = [model.backbone(images.tensor)[f] for f in model.head_in_features]
        anchors = model.anchor_generator(features)
    targets, giou = [], []
    all_anchors = Boxes.cat(anchors).tensor
    for x in inputs:
        gt = x["instances"].gt_boxes
        matched, _ = atss_assign(anchors, gt, 18)
        positive = matched >= 0
        assigned = gt.tensor[matched[positive]]
        targets.append(pairwise_iou(Boxes(all_anchors[positive]), gt)[torch.arange(int(positive.sum())), matched[positive]])
        giou.append(giou_loss_reference(all_anchors[positive], assigned))
    t, giou = torch.cat(targets), torch.cat(giou)
    num_pos = len(t)
    assert num_pos > 5
    expected_iou_loss = (F.softplus(torch.tensor(b)) * num_pos - b * t.sum()) / num_pos
    torch.testing.assert_close(losses["loss_iou"], expected_iou_loss, rtol=1e-5, atol=1e-6)
    # GIoU of each anchor with its box, weighted by t, over sum(t)
    torch.testing.assert_close(losses["loss_box_reg"], (giou * t).sum() / t.sum(), rtol=1e-5, atol=1e-6)


def giou_loss_reference(a, b):
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    lt, rb = torch.max(a[:, :2], b[:, :2]), torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    union = area(a) + area(b) - inter
    hull = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).prod(dim=1)
    return 1 - (inter / union - (hull - union) / hull)


@pytest.mark.parametrize("cls_loss,expected_type,scale", [("focal", EqualizedFocalLoss, 0.0), ("efl", EqualizedFocalLoss, 8.0), ("eqfl", EqualizedQualityFocalLoss, 8.0)])
def test_classification_loss_is_selected_by_config(cls_loss, expected_type, scale):
    model = build("MODEL.EFL.LOSS", cls_loss)
    assert type(model.cls_loss) is expected_type and model.cls_loss.scale == scale
    with EventStorage():
        losses = model(make_inputs([([[10, 10, 40, 50]], [1])]))
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_iou"}
    assert all(torch.isfinite(v) for v in losses.values())


def test_eqfl_pushes_positives_toward_their_iou_target():
    # All class logits start at 0 (p = 0.5). A positive cell whose IoU target is above 0.5 is pushed up
    # (negative gradient), one below 0.5 down; negatives are always pushed down.
    model = build("MODEL.EFL.LOSS", "eqfl")
    constant_head(model, cls_bias=0.0, iou_bias=0.0)
    quality = {}
    forward_dense = model.cls_loss.forward_dense

    def keep_quality(levels, labels, normalizer, q):
        for x in levels:
            x.retain_grad()
        quality.update(levels=levels, labels=labels, q=q)
        return forward_dense(levels, labels, normalizer, q)

    model.cls_loss.forward_dense = keep_quality
    with EventStorage():
        model(make_inputs([([[10, 10, 40, 50], [40, 40, 90, 90]], [1, 1])]))["loss_cls"].backward()
    labels, q = quality["labels"][0], quality["q"][0]
    rows = torch.cat([x.grad[0].reshape(-1, 8, x.shape[2] * x.shape[3]).permute(2, 0, 1).reshape(-1, 8) for x in quality["levels"]])
    positive = labels == 1
    assert (q[positive] > 0.5).any() and (q[positive] < 0.5).any()
    assert (rows[positive, 1][q[positive] > 0.5] < 0).all()
    assert (rows[positive, 1][q[positive] < 0.5] > 0).all()
    assert (rows[~positive] >= 0).all()


def test_test_scores_are_class_times_iou_probabilities():
    model = build().eval()
    constant_head(model, cls_bias=1.0, iou_bias=-0.5)
    with torch.no_grad():
        (result,) = model([{"image": torch.rand(3, 96, 96) * 255}])
    scores = result["instances"].scores
    expected = torch.sigmoid(torch.tensor(1.0)) * torch.sigmoid(torch.tensor(-0.5))
    assert len(scores) > 0
    torch.testing.assert_close(scores, torch.full_like(scores, expected.item()))


def test_full_model_clipping_scales_all_gradients_by_one_factor():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    (model(torch.randn(8, 4)) * 1000).sum().backward()
    before = torch.cat([p.grad.flatten() for p in model.parameters()])
    hook = FullModelGradientClipping(max_norm=1.0)
    hook.trainer = type("Trainer", (), {"model": model, "optimizer": None})()
    hook.after_backward()
    after = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert before.norm() > 10
    torch.testing.assert_close(after, before / before.norm(), rtol=1e-4, atol=1e-7)
