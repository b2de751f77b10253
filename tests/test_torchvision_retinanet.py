"""EFL in torchvision's RetinaNet, with the README's code ("EFL in your own detector") run exactly as it is written."""
import copy
import re

import pytest
import torch
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from conftest import REPO

NUM_CLASSES = 5  # 0 (never present, as in torchvision's COCO models) and 1..4
SIZE = 96


def readme_blocks():
    """The two Python blocks of docs/own-detector.md's "torchvision's RetinaNet" section: the head, then a training
    step."""
    page = REPO.joinpath("docs", "own-detector.md").read_text()
    section = page.split("\n## torchvision's RetinaNet\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 2, "docs/own-detector.md: expected the head and the training step in the torchvision section"
    return blocks


HEAD_CODE, STEP_CODE = readme_blocks()
README = {}
exec(compile(HEAD_CODE, "README.md (EFLClassificationHead)", "exec"), README)


def build_torchvision_retinanet():
    """torchvision's RetinaNet with a ResNet-18 FPN, random weights, 96 px inputs."""
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(
        backbone_name="resnet18",
        weights=None,
        trainable_layers=5,
        returned_layers=[2, 3, 4],
        extra_blocks=LastLevelP6P7(256, 256),
    )
    return RetinaNet(backbone, NUM_CLASSES, min_size=SIZE, max_size=SIZE)


def batch(*images):
    """Images with their targets: each image a list of (box, label)."""
    g = torch.Generator().manual_seed(len(images))
    tensors = [torch.rand(3, SIZE, SIZE, generator=g) for _ in images]
    targets = [
        {
            "boxes": torch.tensor([b for b, _ in objects], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([c for _, c in objects], dtype=torch.long),
        }
        for objects in images
    ]
    return tensors, targets


A = [([10, 10, 40, 50], 1), ([50, 20, 90, 60], 1), ([5, 60, 30, 90], 1), ([60, 65, 85, 90], 2)]
B = [([20, 20, 80, 80], 1)]
C = [([30, 10, 70, 45], 3)]


def train_step(model, optimizer, images, targets):
    """The README's training step, as written."""
    scope = {"model": model, "optimizer": optimizer, "images": images, "targets": targets}
    exec(compile(STEP_CODE, "README.md (training step)", "exec"), scope)
    return scope["losses"], scope["statistics"]


def test_with_g_1_it_is_torchvision_focal_loss():
    stock = build_torchvision_retinanet().train()
    model = README["with_efl"](copy.deepcopy(stock)).train()
    assert isinstance(model.head.classification_head, README["EFLClassificationHead"])
    images, targets = batch(A, B, [])  # an image without boxes too
    theirs = stock(images, targets)
    ours = model(images, targets)
    for name in ("classification", "bbox_regression"):
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-7, msg=name)


def test_training_steps_move_the_statistics_as_they_should():
    model = README["with_efl"](build_torchvision_retinanet())
    head = model.head.classification_head
    # Start undecided (p = 0.5) rather than at torchvision's prior 0.01: then negatives carry real gradient from the
    # first step and g_j moves within a few steps. (At p = 0.01 the negatives are so easy that every class with a
    # positive keeps g_j = 1 for the first steps.)
    torch.nn.init.zeros_(head.cls_logits.bias)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    # Keep the logits and matched anchors of each step, to check the statistics against the gradients.
    kept = {}
    head_forward, compute_loss = head.forward, head.compute_loss

    def forward_and_keep(x):
        kept["logits"] = head_forward(x)
        kept["logits"].retain_grad()
        return kept["logits"]

    def compute_loss_and_keep(targets, head_outputs, matched_idxs):
        kept["matched"] = matched_idxs
        return compute_loss(targets, head_outputs, matched_idxs)

    head.forward, head.compute_loss = forward_and_keep, compute_loss_and_keep

    present_per_step = [{1, 2}, {1, 3}]
    for step, images_objects in enumerate([(A, B), (B, C)]):
        before = {k: v.clone() for k, v in head.efl.state_dict().items()}
        losses, statistics = train_step(model, optimizer, *batch(*images_objects))
        assert statistics is head.efl
        assert all(torch.isfinite(v) for v in losses.values())

        # Exactly the per-class sums of |d loss / d logit| over positive and over negative cells (float64).
        pos = torch.zeros(NUM_CLASSES, dtype=torch.float64)
        neg = torch.zeros(NUM_CLASSES, dtype=torch.float64)
        for grad, matched, objects in zip(kept["logits"].grad, kept["matched"], images_objects):
            grad = grad.double().abs() * len(images_objects)  # undo the mean over images
            labels = torch.tensor([c for _, c in objects], dtype=torch.long)
            for c in range(NUM_CLASSES):
                positive = (matched >= 0) & (labels[matched.clamp(min=0)] == c)
                negative = (matched == -1) | ((matched >= 0) & ~positive)
                pos[c] += grad[positive, c].sum()
                neg[c] += grad[negative, c].sum()
        torch.testing.assert_close(statistics.pos_grad.double() - before["pos_grad"], pos, rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(statistics.neg_grad.double() - before["neg_grad"], neg, rtol=1e-4, atol=1e-9)

        present = sorted(present_per_step[step])
        absent = sorted(set(range(NUM_CLASSES)) - present_per_step[step])
        assert (pos[present] > 0).all() and (pos[absent] == 0).all(), step
        assert (neg > 0).all(), step

    g = statistics.pos_neg
    assert g[0] == 0 and g[4] == 0  # never a positive: g = 0, gamma = gamma_b + s
    assert torch.equal(statistics.focusing_factors()[[0, 4]], torch.tensor([10.0, 10.0]))
    # class 1 is in every image, classes 2 and 3 in a few: fewer positives, smaller g (larger gamma), all below 1
    assert 0 < g[2] < g[1] < 1 and 0 < g[3] < g[1], g


@pytest.mark.parametrize("normalizer", [1, 7])
def test_the_per_image_normaliser_is_torchvision_number_of_foreground_anchors(normalizer):
    """The README's head gives EFL the foreground count of each image: here checked against a hand count."""
    head = README["EFLClassificationHead"](8, 1, 3)
    matched = torch.full((20,), -1)
    matched[:normalizer] = 0
    matched[-3:] = -2
    logits = torch.randn(1, 20, 3)
    targets = [{"labels": torch.tensor([2])}]
    loss = head.compute_loss(targets, {"cls_logits": logits}, [matched])
    labels = torch.full((20,), 3)
    labels[:normalizer] = 2
    labels[-3:] = -1
    torch.testing.assert_close(loss, head.efl(logits[0], labels) / normalizer)
