"""
No per-step host syncs of our own: a training step of every EFL detector reads no tensor value back to the host
outside detectron2's own code (listed below); the classes of the annotations are checked once, on the CPU, by the
training loader. Counted on the CPU with benchmarks/host_syncs.py, as host reads of tensor values (what would sync on
CUDA).
"""
import sys

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage

from conftest import REPO, small_cfg
from efl import EqualizedFocalLoss, EqualizedQualityFocalLoss
from efl.data.train_loader import CheckAnnotatedClasses
from efl.losses import torch_kernel
from test_fcos import BOXES as FCOS_BOXES
from test_fcos import build as build_fcos
from test_fcos import make_inputs as make_fcos_inputs
from test_kernels import dense_problem
from test_retinanet import make_inputs

sys.path.insert(0, str(REPO / "benchmarks"))
from host_syncs import BACKWARD, HostSyncs  # noqa: E402

# detectron2's own host reads in a RetinaNet training step (each once per image but the last).
DETECTRON2_READS = {
    ("detectron2/structures/image_list.py", "from_tensors"),  # padded size, from CPU shape tensors: no GPU sync
    ("detectron2/modeling/matcher.py", "__call__"),  # assert on the IoU matrix
    ("detectron2/layers/wrappers.py", "nonzero_tuple"),  # Matcher's low-quality matches
    ("detectron2/modeling/box_regression.py", "get_deltas"),  # assert on the anchors' widths
    ("detectron2/modeling/box_regression.py", "_dense_box_regression_loss"),  # positives by boolean mask
    (BACKWARD, "IndexBackward0"),  # the backward of that boolean-mask indexing
}
# FCOS's own: its box loss, fvcore's GIoU of the positives taken by boolean mask (fvcore asserts on the boxes and
# indexes by boolean masks too). EFLFCOS's centerness loss uses masks instead of FCOS's boolean-mask indexing.
FCOS_READS = {
    ("detectron2/structures/image_list.py", "from_tensors"),
    ("detectron2/modeling/box_regression.py", "_dense_box_regression_loss"),
    ("fvcore/nn/giou_loss.py", "giou_loss"),
    (BACKWARD, "IndexBackward0"),
    (BACKWARD, "IndexPutBackward0"),
}
INPUTS = [([[10, 10, 40, 50], [50, 20, 90, 60]], [1, 4]), ([[20, 20, 80, 80]], [6])]
MODELS = {
    "EFLRetinaNet": (),
    "ImprovedRetinaNet EFL": ("MODEL.META_ARCHITECTURE", "ImprovedRetinaNet"),
    "ImprovedRetinaNet EQFL": ("MODEL.META_ARCHITECTURE", "ImprovedRetinaNet", "MODEL.EFL.LOSS", "eqfl"),
    "ImprovedRetinaNet focal, IoU matching": (
        "MODEL.META_ARCHITECTURE", "ImprovedRetinaNet", "MODEL.EFL.LOSS", "focal",
        "MODEL.IMPROVED_BASELINE.ATSS_TOPK", 0,
    ),
}  # fmt: skip


def step_model(name):
    """A model of MODELS or EFLFCOS (built by detectron2's FCOS config), in training mode, and a batch for it."""
    torch.manual_seed(0)
    if name == "EFLFCOS":
        return build_fcos(), make_fcos_inputs(FCOS_BOXES)
    return build_model(small_cfg(*MODELS[name])).train(), make_inputs(INPUTS)


def host_reads_of_a_step(name, iteration):
    model, inputs = step_model(name)
    with EventStorage(start_iter=iteration):
        with HostSyncs("cpu") as reads:
            sum(model(inputs).values()).backward()
    return reads


@pytest.mark.parametrize("model", [*MODELS, "EFLFCOS"])
def test_a_training_step_reads_nothing_back_outside_detectron2(model):
    reads = host_reads_of_a_step(model, iteration=1)
    ours = [s for s in reads.sites if not s.path.startswith(("detectron2", "fvcore")) and s.path != BACKWARD]
    assert ours == []
    assert set(reads.by_site()) <= (FCOS_READS if model == "EFLFCOS" else DETECTRON2_READS)


def test_logging_iterations_read_the_logged_values_once():
    reads = host_reads_of_a_step("EFLRetinaNet", iteration=20)
    ours = {(s.path, s.function) for s in reads.sites if s.path.startswith("efl")}
    assert ours == {("efl/modeling/efl_detector.py", "log_efl_state")}


def test_the_chunked_torch_path_reads_nothing_back(monkeypatch):
    monkeypatch.setattr(torch_kernel, "CHUNK_CELLS", 7 * 5)  # many blocks
    levels, labels = dense_problem()
    quality = torch.rand(labels.shape)
    for module in (EqualizedFocalLoss(7), EqualizedQualityFocalLoss(7)):
        leaves = [x.clone().requires_grad_() for x in levels]
        with HostSyncs("cpu") as reads:
            module.train().forward_dense(leaves, labels, torch.tensor(3.0), quality).backward()
        assert reads.sites == []
        assert module.neg_grad.sum() > 0


def test_labels_above_c_act_as_background_and_below_minus_one_as_ignored():
    """The loss never reads its labels back (the training loader checks the classes they come from)."""
    logits = torch.randn(4, 3)
    loss = EqualizedFocalLoss(3)
    with HostSyncs("cpu") as reads:
        loss(logits, torch.tensor([0, 7, -5, 3]))
    assert reads.sites == []
    assert torch.equal(loss(logits, torch.tensor([0, 7, -5, 3])), loss(logits, torch.tensor([0, 3, -1, 3])))


def test_the_training_loader_refuses_an_annotation_of_an_unknown_class_naming_the_image():
    def mapper(classes):
        instances = Instances((8, 8))
        instances.gt_classes = torch.tensor(classes)
        return lambda d: {"file_name": d["file_name"], "instances": instances}

    assert CheckAnnotatedClasses(mapper([0, 7]), 8)({"file_name": "a.jpg"})["instances"].gt_classes.tolist() == [0, 7]
    assert CheckAnnotatedClasses(mapper([]), 8)({"file_name": "a.jpg"}) is not None
    assert CheckAnnotatedClasses(lambda d: None, 8)({"file_name": "a.jpg"}) is None  # an unreadable image
    for bad in ([0, 8], [-1, 2]):
        with pytest.raises(ValueError, match=r"'b.jpg'.*outside \[0, 8\).*\(MODEL.RETINANET.NUM_CLASSES is 8\)"):
            CheckAnnotatedClasses(mapper(bad), 8, "MODEL.RETINANET.NUM_CLASSES")({"file_name": "b.jpg"})


def test_giou_loss_has_fvcores_values_and_gradients():
    from fvcore.nn import giou_loss as fvcore_giou_loss

    from efl.modeling.giou import giou_loss

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + torch.rand(200, 2, generator=g) * 30 + 1], dim=1)
    xy = torch.rand(200, 2, generator=g) * 50  # overlapping, disjoint and touching pairs
    targets = torch.cat([xy, xy + torch.rand(200, 2, generator=g) * 30 + 1], dim=1)
    targets[0] = torch.tensor([boxes[0, 2], 0.0, boxes[0, 2] + 5, 5.0])
    ours, theirs = boxes.clone().requires_grad_(), boxes.clone().requires_grad_()
    loss = giou_loss(ours, targets)
    expected = fvcore_giou_loss(theirs, targets)
    (loss * torch.arange(200)).sum().backward()
    (expected * torch.arange(200)).sum().backward()
    assert torch.equal(loss, expected) and torch.equal(ours.grad, theirs.grad)
    with HostSyncs("cpu") as reads:
        giou_loss(boxes, targets)
    assert reads.sites == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("model", [*MODELS, "EFLFCOS"])
def test_cuda_training_step_syncs_only_in_detectron2(model):
    model, inputs = step_model(model)
    model = model.cuda()
    with EventStorage(start_iter=0) as storage:
        for iteration in (1, 2):  # the first call checks and tunes the Triton kernel
            storage.iter = iteration
            with HostSyncs("cuda") as syncs:
                sum(model(inputs).values()).backward()
    assert [s for s in syncs.sites if s.path.startswith("efl")] == []


def test_the_amp_hook_undoes_a_skipped_step_without_reading_the_scale_back():
    from efl.engine import RevertStatisticsOfSkippedSteps
    from test_mixed_precision import _Trainer

    model = torch.nn.Module()
    model.cls_loss = EqualizedFocalLoss(3).train()
    model.weight = torch.nn.Parameter(torch.ones(1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    hook = RevertStatisticsOfSkippedSteps()
    hook.trainer = _Trainer(model, scaler)
    kept = []
    for overflow in (False, False, True):
        with HostSyncs("cpu") as reads:
            hook.before_step()
        loss = model.cls_loss(torch.randn(6, 3, requires_grad=True), torch.tensor([0, 1, 3, 3, 2, -1]))
        scaler.scale(loss + model.weight.sum()).backward()
        if overflow:
            model.weight.grad.fill_(float("inf"))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        with HostSyncs("cpu") as after:
            hook.after_step()
        kept.append(model.cls_loss.pos_grad.clone())
    assert reads.sites == [] and after.sites == []  # from the second step on, nothing is read back
    assert torch.equal(kept[2], kept[1]) and not torch.equal(kept[1], kept[0])
