"""EFLFCOS: built by detectron2's own FCOS LazyConfig, FCOS's losses at g = 1, exact attribution, and the end-to-end
cases of detectron2's FCOS tests (empty images, inference on the CPU)."""
import copy

import pytest
import torch

from detectron2 import model_zoo
from detectron2.config import instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling.meta_arch.fcos import FCOS
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from efl import EFLFCOS, EqualizedFocalLoss, lvis_frequency_groups

NUM_CLASSES = 8


def fcos_config(target=EFLFCOS):
    """detectron2's FCOS model config with ``target`` as the model, shrunk for the CPU: R-18, a 64-channel FPN,
    one conv per head branch, 8 classes."""
    model = model_zoo.get_config("common/models/fcos.py").model
    model._target_ = target
    model.num_classes = NUM_CLASSES
    model.backbone.bottom_up.stages.depth = 18
    del model.backbone.bottom_up.stages.stride_in_1x1  # a ResNet-50 option
    model.backbone.out_channels = 64
    model.backbone.top_block.in_channels = 64
    model.head.input_shape = [ShapeSpec(channels=64)] * 5
    model.head.conv_dims = [64]
    return model


def build(target=EFLFCOS, **overrides):
    config = fcos_config(target)
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    return instantiate(config).train()


def make_inputs(boxes_per_image, size=(96, 96), seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for boxes, classes in boxes_per_image:
        instances = Instances(size)
        instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.gt_classes = torch.tensor(classes, dtype=torch.long)
        inputs.append({"image": torch.rand(3, *size, generator=g) * 255, "instances": instances})
    return inputs


BOXES = [
    ([[10, 10, 40, 50], [50, 20, 90, 60], [5, 60, 30, 90]], [1, 4, 6]),
    ([[20, 20, 80, 80], [0, 0, 24, 24]], [4, 0]),
]


@pytest.mark.parametrize("config", ["common/models/fcos.py", "COCO-Detection/fcos_R_50_FPN_1x.py"])
def test_detectron2_fcos_config_builds_it_with_only_the_target_changed(config):
    model_config = model_zoo.get_config(config).model
    model_config._target_ = EFLFCOS
    model = instantiate(model_config)
    assert isinstance(model, EFLFCOS) and isinstance(model, FCOS)
    loss = model.cls_loss
    assert type(loss) is EqualizedFocalLoss
    assert (loss.num_classes, loss.gamma_b, loss.scale, loss.alpha) == (80, 2.0, 8.0, 0.25)
    assert model.loss_normalizer.item() == 300.0  # FCOS's starting value
    assert {"cls_loss.pos_grad", "cls_loss.neg_grad", "cls_loss.pos_neg", "loss_normalizer"} <= set(model.state_dict())


def test_a_given_loss_and_frequency_groups_are_used():
    loss = EqualizedFocalLoss(NUM_CLASSES, scale=4.0)
    groups = lvis_frequency_groups("efl_synth_test_train", NUM_CLASSES)
    model = build(cls_loss=loss, frequency_groups=groups)
    assert model.cls_loss is loss
    assert model.frequency_groups.tolist() == groups
    with pytest.raises(ValueError, match="cls_loss has 80 classes"):
        build(cls_loss=EqualizedFocalLoss(80))
    default = build(focal_loss_gamma=1.5, focal_loss_alpha=0.5).cls_loss  # FCOS's focal-loss settings carry over
    assert (default.gamma_b, default.scale, default.alpha) == (1.5, 8.0, 0.5)


def test_at_g_1_the_losses_and_normaliser_are_fcos_own():
    """With g = 1 EFL is focal loss: all three losses and the moving-average normaliser equal FCOS's."""
    efl, fcos = build(EFLFCOS), build(FCOS)
    missing, unexpected = fcos.load_state_dict(efl.state_dict(), strict=False)
    assert not missing and set(unexpected) == {"cls_loss.pos_grad", "cls_loss.neg_grad", "cls_loss.pos_neg", "loss_normalizer"}
    for step, seed in enumerate((0, 1)):
        inputs = make_inputs(BOXES, seed=seed)
        with EventStorage():  # one each: they log num_pos_anchors with different smoothing hints
            ours = efl(inputs)
        with EventStorage():
            theirs = fcos(inputs)
        assert set(ours) == set(theirs) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}
        for name in theirs:
            torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-7, msg=f"step {step}: {name}")
        assert efl.loss_normalizer.item() == pytest.approx(fcos.loss_normalizer, rel=1e-12)
    assert efl.loss_normalizer.item() < 300  # it moved: 0.9 * (0.9 * 300 + 0.1 P1) + 0.1 P2


def capture_head_logits(model):
    """Keep the per-level (N, C, H, W) classification outputs of the head, with their gradients."""
    captured = []
    forward = model.head.forward

    def forward_and_keep(features):
        logits, deltas, centerness = forward(features)
        for x in logits:
            x.retain_grad()
        captured.extend(logits)
        return logits, deltas, centerness

    model.head.forward = forward_and_keep
    return captured


def test_statistics_credit_each_gradient_to_its_own_anchor_point_and_class():
    model = build()
    logits = capture_head_logits(model)
    inputs = make_inputs(BOXES)
    with EventStorage():
        model(inputs)["loss_fcos_cls"].backward()

    images = model.preprocess_image(inputs)
    features = [model.backbone(images.tensor)[f] for f in model.head_in_features]
    anchors = model.anchor_generator(features)
    labels = torch.stack(model.label_anchors(anchors, [x["instances"] for x in inputs])[0])  # (N, R)
    grads = torch.cat([x.grad.double().flatten(2) for x in logits], dim=2).transpose(1, 2)  # (N, R, C), FCOS's order
    assert grads.shape[:2] == labels.shape
    positive = torch.nn.functional.one_hot(labels, NUM_CLASSES + 1)[..., :NUM_CLASSES].bool()
    pos = (grads.abs() * positive).sum((0, 1))
    neg = (grads.abs() * ~positive).sum((0, 1))
    torch.testing.assert_close(model.cls_loss.pos_grad.double(), pos, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(model.cls_loss.neg_grad.double(), neg, rtol=1e-5, atol=1e-12)
    assert (model.cls_loss.pos_grad[[0, 1, 4, 6]] > 0).all() and (model.cls_loss.pos_grad[[2, 3, 5, 7]] == 0).all()


def test_images_without_boxes_train_and_infer():
    """detectron2's FCOS end-to-end test_empty_data: inference, then a training step, on images without boxes."""
    model = build()
    inputs = make_inputs([([], []), ([], [])], size=(96, 80))
    model.eval()
    with torch.no_grad():
        model([{"image": x["image"]} for x in inputs])
    model.train()
    with EventStorage():
        losses = model(inputs)
        sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_fcos_loc"] == 0 and losses["loss_fcos_ctr"] == 0
    assert torch.all(model.cls_loss.pos_grad == 0) and torch.all(model.cls_loss.neg_grad > 0)
    assert torch.all(model.cls_loss.pos_neg == 0)


def test_half_empty_batch_trains_with_finite_losses_and_statistics():
    model = build()
    with EventStorage():
        losses = model(make_inputs([([], []), BOXES[0]]))
        sum(losses.values()).backward()
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    # the empty image's centerness targets are NaN (no box): masked out of the loss and of its gradient
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    stats = model.cls_loss
    assert all(torch.isfinite(b).all() for b in (stats.pos_grad, stats.neg_grad, stats.pos_neg))
    assert (stats.pos_grad[[1, 4, 6]] > 0).all() and (stats.pos_grad[[0, 2, 3, 5, 7]] == 0).all()
    assert (stats.pos_neg[[1, 4, 6]] > 0).all() and (stats.pos_neg[[0, 2, 3, 5, 7]] == 0).all()


def test_inference_on_the_cpu_returns_instances_and_leaves_the_statistics_alone():
    model = build(test_score_thresh=0.0).eval()
    before = {k: v.clone() for k, v in model.cls_loss.state_dict().items()}
    with torch.no_grad():
        outputs = model([{"image": torch.rand(3, 96, 80) * 255, "height": 192, "width": 160}])
    instances = outputs[0]["instances"]
    assert isinstance(instances, Instances) and instances.image_size == (192, 160)
    assert len(instances) > 0 and {"pred_boxes", "scores", "pred_classes"} <= set(instances.get_fields())
    assert instances.pred_classes.max() < NUM_CLASSES
    for name, value in model.cls_loss.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_reset_statistics_returns_to_focal_loss_and_fcos_normaliser_start():
    model = build()
    with EventStorage():
        sum(model(make_inputs(BOXES)).values()).backward()
    assert model.cls_loss.neg_grad.sum() > 0 and model.loss_normalizer.item() != 300.0
    model.reset_statistics()
    assert torch.all(model.cls_loss.pos_grad == 0) and torch.all(model.cls_loss.neg_grad == 0)
    assert torch.all(model.cls_loss.pos_neg == 1) and model.loss_normalizer.item() == 300.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_trained_on_the_gpu_then_evaluated_on_the_cpu():
    """detectron2's FCOS end-to-end test_eval_tocpu, after a training step on the GPU (Triton kernel)."""
    model = build().cuda()
    inputs = make_inputs(BOXES)
    with EventStorage():
        losses = model(inputs)
        sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values()) and (model.cls_loss.pos_grad[[0, 1, 4, 6]] > 0).all()
    cpu = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():
        outputs = cpu([{"image": x["image"]} for x in inputs])
    assert all(isinstance(o["instances"], Instances) for o in outputs)
