"""
The EFL code paths (chunked PyTorch, Triton) against the float64 oracle, on plain
(R, C) logits and on a dense head's per-level (N, A*C, H, W) outputs.

The Triton kernel runs on CUDA when there is a GPU; without one, test_triton_kernel_in_the_interpreter runs
this file's Triton cases, and test_kernel_fallback.py's, on the CPU under Triton's interpreter (TRITON_INTERPRET=1),
which executes the same kernel code, slowly.
"""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from efl import EqualizedFocalLoss, EqualizedQualityFocalLoss
from oracle import reference_efl

CUDA = torch.cuda.is_available()
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if CUDA else "cpu"
FALLBACK_TESTS = os.path.join(os.path.dirname(__file__), "test_kernel_fallback.py")


def implementations():
    triton_skip = pytest.mark.skipif(
        not (CUDA or INTERPRETED), reason="needs a GPU (runs in Triton's interpreter via another test)"
    )
    return ["torch", pytest.param("triton", marks=triton_skip)]


def as_rows(levels, num_anchors, num_classes):
    """(N, A*C, H, W) levels -> (N*R, C) rows in detectron2's anchor order (y, x, anchor) per level."""
    rows = [
        x.view(x.shape[0], num_anchors, num_classes, -1).permute(0, 3, 1, 2).flatten(1, 2) for x in levels
    ]
    return torch.cat(rows, dim=1).reshape(-1, num_classes)


def dense_problem(num_images=2, num_anchors=3, num_classes=7, sizes=((5, 6), (3, 2), (1, 1)), seed=0):
    g = torch.Generator().manual_seed(seed)
    levels = [
        torch.randn(num_images, num_anchors * num_classes, h, w, generator=g) * 3 for h, w in sizes
    ]
    num_rows = sum(h * w for h, w in sizes) * num_anchors
    labels = torch.randint(-1, num_classes + 1, (num_images, num_rows), generator=g)
    return levels, labels


def run_dense(module, levels, labels, normalizer, upstream=1.0, dtype=None):
    leaves = [x.to(DEVICE, dtype).requires_grad_() for x in levels]
    loss = module.forward_dense(leaves, labels.to(DEVICE), normalizer)
    (loss * upstream).backward()
    return loss.detach().cpu(), [x.grad.cpu() for x in leaves]


@pytest.mark.parametrize("implementation", implementations())
@pytest.mark.parametrize("num_anchors", [1, 3])
def test_dense_levels_match_the_float64_oracle(implementation, num_anchors):
    num_classes = 7
    levels, labels = dense_problem(num_anchors=num_anchors)
    pos_neg = torch.rand(num_classes, generator=torch.Generator().manual_seed(1))
    module = EqualizedFocalLoss(num_classes, implementation=implementation).to(DEVICE).train()
    module.pos_neg.copy_(pos_neg)
    loss, grads = run_dense(module, levels, labels, normalizer=6.5, upstream=3.0)

    ref_loss, ref_grad, ref_pos, ref_neg = reference_efl(
        as_rows(levels, num_anchors, num_classes), labels.reshape(-1), pos_neg, normalizer=6.5
    )
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=0)
    grad_rows = as_rows(grads, num_anchors, num_classes).double()
    torch.testing.assert_close(grad_rows, 3.0 * ref_grad, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(module.pos_grad.cpu().double(), ref_pos, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(module.neg_grad.cpu().double(), ref_neg, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("implementation", implementations())
def test_plain_rows_match_the_float64_oracle(implementation):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(333, 11, generator=g) * 4
    labels = torch.randint(-1, 12, (333,), generator=g)
    module = EqualizedFocalLoss(11, implementation=implementation).to(DEVICE).train()
    x = logits.to(DEVICE).requires_grad_()
    loss = module(x, labels.to(DEVICE), 2.0)
    loss.backward()
    ref_loss, ref_grad, ref_pos, ref_neg = reference_efl(logits, labels, torch.ones(11), normalizer=2.0)
    torch.testing.assert_close(loss.cpu().double(), ref_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(x.grad.cpu().double(), ref_grad, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(module.pos_grad.cpu().double(), ref_pos, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(module.neg_grad.cpu().double(), ref_neg, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("implementation", implementations())
def test_extreme_logits_stay_finite_on_every_path(implementation):
    levels = [torch.tensor([100.0, -100.0, 50.0, -50.0, 0.0, 30.0]).view(1, 3, 2, 1)]
    labels = torch.tensor([[0, 3]])
    module = EqualizedFocalLoss(3, implementation=implementation).to(DEVICE).train()
    module.pos_neg.zero_()
    loss, grads = run_dense(module, levels, labels, normalizer=1.0)
    ref_loss, ref_grad, _, _ = reference_efl(as_rows(levels, 1, 3), labels.reshape(-1), torch.zeros(3))
    assert torch.isfinite(loss) and torch.isfinite(grads[0]).all()
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(as_rows(grads, 1, 3).double(), ref_grad, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("implementation", implementations())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_levels_are_read_as_such_and_computed_in_float32(implementation, dtype):
    levels, labels = dense_problem(seed=3)
    module = EqualizedFocalLoss(7, implementation=implementation).to(DEVICE).train()
    loss, grads = run_dense(module, levels, labels, normalizer=4.0, dtype=dtype)
    assert all(g.dtype == dtype for g in grads)
    rounded = [x.to(dtype).float() for x in levels]
    ref_loss, ref_grad, ref_pos, _ = reference_efl(as_rows(rounded, 3, 7), labels.reshape(-1), torch.ones(7), normalizer=4.0)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(module.pos_grad.cpu().double(), ref_pos, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(as_rows(grads, 3, 7).double(), ref_grad, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("implementation", implementations())
@pytest.mark.parametrize("focusing,weighting", [(True, False), (False, True)])
def test_ablations_without_focusing_or_weighting_factor(implementation, focusing, weighting):
    levels, labels = dense_problem(seed=5)
    pos_neg = torch.rand(7, generator=torch.Generator().manual_seed(6))
    module = EqualizedFocalLoss(7, implementation=implementation, focusing=focusing, weighting=weighting)
    module = module.to(DEVICE).train()
    module.pos_neg.copy_(pos_neg)
    loss, grads = run_dense(module, levels, labels, normalizer=2.0)
    ref_loss, ref_grad, _, _ = reference_efl(
        as_rows(levels, 3, 7), labels.reshape(-1), pos_neg, normalizer=2.0, focusing=focusing, weighting=weighting
    )
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(as_rows(grads, 3, 7).double(), ref_grad, rtol=1e-5, atol=1e-9)


def run_eqfl(module, levels, labels, quality, normalizer):
    leaves = [x.to(DEVICE).requires_grad_() for x in levels]
    loss = module.forward_dense(leaves, labels.to(DEVICE), normalizer, quality.to(DEVICE))
    (loss * 2.0).backward()
    return loss.detach().cpu(), [x.grad.cpu() / 2.0 for x in leaves]


@pytest.mark.parametrize("implementation", implementations())
def test_eqfl_matches_the_float64_oracle(implementation):
    levels, labels = dense_problem(seed=7)
    quality = torch.rand(labels.shape, generator=torch.Generator().manual_seed(8))
    quality[0, :5] = torch.sigmoid(as_rows(levels, 3, 7)[torch.arange(5), labels[0, :5].clamp(0, 6)])  # p = t
    pos_neg = torch.rand(7, generator=torch.Generator().manual_seed(9))
    module = EqualizedQualityFocalLoss(7, implementation=implementation).to(DEVICE).train()
    module.pos_neg.copy_(pos_neg)
    loss, grads = run_eqfl(module, levels, labels, quality, normalizer=3.0)
    ref_loss, ref_grad, ref_pos, ref_neg = reference_efl(
        as_rows(levels, 3, 7), labels.reshape(-1), pos_neg, normalizer=3.0, quality=quality.reshape(-1)
    )
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(as_rows(grads, 3, 7).double(), ref_grad, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(module.pos_grad.cpu().double(), ref_pos, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(module.neg_grad.cpu().double(), ref_neg, rtol=1e-5, atol=1e-12)


def quality_focal_loss(logits, labels, quality, beta=2.0):
    """Quality focal loss (Generalized Focal Loss, Li et al. 2020) as its authors write it: soft one-hot target."""
    num_classes = logits.shape[1]
    valid = labels >= 0
    fg = valid & (labels < num_classes)
    target = torch.zeros_like(logits)
    target[fg, labels[fg]] = quality[fg]
    sigma = logits.sigmoid()
    scale = torch.where(target > 0, (target - sigma).abs(), sigma).pow(beta)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce * scale)[valid].sum()


def test_eqfl_with_g_one_is_quality_focal_loss():
    g = torch.Generator().manual_seed(10)
    logits = torch.randn(200, 5, generator=g) * 2
    labels = torch.randint(-1, 6, (200,), generator=g)
    quality = torch.rand(200, generator=g)
    x = logits.clone().requires_grad_()
    loss = EqualizedQualityFocalLoss(5).train()(x, labels, quality=quality)
    loss.backward()
    y = logits.clone().requires_grad_()
    expected = quality_focal_loss(y, labels, quality)
    expected.backward()
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-8)


def test_eqfl_rejects_a_missing_quality_or_one_not_shaped_like_the_labels():
    logits, labels = torch.zeros(4, 3), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match="needs quality.*got None"):
        EqualizedQualityFocalLoss(3)(logits, labels)
    with pytest.raises(ValueError, match="needs quality.*got torch.float32 \\(3,\\)"):
        EqualizedQualityFocalLoss(3)(logits, labels, quality=torch.zeros(3))


def test_every_variant_takes_the_same_arguments_and_efl_ignores_quality():
    g = torch.Generator().manual_seed(3)
    logits, labels, quality = torch.randn(50, 4, generator=g), torch.randint(-1, 5, (50,), generator=g), torch.rand(50)
    for loss in (EqualizedFocalLoss(4), EqualizedQualityFocalLoss(4)):
        assert torch.isfinite(loss(logits, labels, normalizer=2.0, quality=quality))
    efl = EqualizedFocalLoss(4)
    assert torch.equal(efl(logits, labels, 2.0, quality), efl(logits, labels, 2.0))
    assert torch.equal(efl(logits, labels, torch.tensor(2.0)), efl(logits, labels, 2.0))


def test_forward_dense_equals_forward_on_the_transposed_rows():
    levels, labels = dense_problem(seed=4)
    dense = EqualizedFocalLoss(7).train()
    dense_loss, dense_grads = run_dense(dense, levels, labels, normalizer=3.0)
    rows = EqualizedFocalLoss(7).train()
    x = as_rows(levels, 3, 7).to(DEVICE).detach().requires_grad_()
    rows_loss = rows(x, labels.reshape(-1).to(DEVICE), 3.0)
    rows_loss.backward()
    torch.testing.assert_close(dense_loss, rows_loss.detach().cpu())
    torch.testing.assert_close(as_rows(dense_grads, 3, 7), x.grad.cpu())
    torch.testing.assert_close(dense.pos_grad, rows.pos_grad)
    torch.testing.assert_close(dense.neg_grad, rows.neg_grad)


def test_forward_dense_rejects_mismatched_shapes():
    levels, labels = dense_problem()
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        EqualizedFocalLoss(5).forward_dense(levels, labels)
    with pytest.raises(ValueError, match="labels must have shape"):
        EqualizedFocalLoss(7).forward_dense(levels, labels[:, :-1])


def test_environment_variable_overrides_the_implementation(monkeypatch):
    levels, labels = dense_problem()
    module = EqualizedFocalLoss(7, implementation="torch").train()
    run_dense(module, levels, labels, normalizer=1.0)
    monkeypatch.setenv("EFL_IMPLEMENTATION", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="triton"):
        module.forward_dense([x.cpu() for x in levels], labels)
    monkeypatch.setenv("EFL_IMPLEMENTATION", "fastest")
    with pytest.raises(ValueError, match="EFL_IMPLEMENTATION"):
        module.forward_dense(levels, labels)
    with pytest.raises(ValueError, match="MODEL.EFL.IMPLEMENTATION"):
        EqualizedFocalLoss(7, implementation="fastest")


@pytest.mark.skipif(not (CUDA or INTERPRETED), reason="needs a GPU (runs in Triton's interpreter via another test)")
@pytest.mark.parametrize("layout", ["levels", "rows"])
def test_triton_every_tile_configuration_matches_the_float64_oracle(layout):
    from efl.losses.targets import DenseTargets
    from efl.losses.triton_kernel import CONFIGS, efl_grad_triton, efl_loss_triton

    levels, labels = dense_problem(sizes=((4, 5), (1, 1)), seed=16)
    if layout == "rows":  # forward()'s (R, C) logits: classes contiguous, one level
        levels = [as_rows(levels, 3, 7).t()[None, :, :, None]]
        labels = labels.reshape(1, -1)
    num_anchors = 3 if layout == "levels" else 1
    pos_neg = torch.rand(7, generator=torch.Generator().manual_seed(17))
    module = EqualizedFocalLoss(7)
    module.pos_neg.copy_(pos_neg)
    gamma = module.focusing_factors()
    w_pos, w_neg = module._class_weights(gamma / 2.0, 3.0)
    targets = DenseTargets(labels.to(DEVICE), None, gamma.to(DEVICE), w_pos.to(DEVICE), w_neg.to(DEVICE), num_anchors)
    levels = [x.to(DEVICE) for x in levels]
    ref_loss, ref_grad, ref_pos, ref_neg = reference_efl(
        as_rows([x.cpu() for x in levels], num_anchors, 7), labels.reshape(-1), pos_neg, normalizer=3.0
    )
    for config in CONFIGS:
        loss = efl_loss_triton(levels, targets, config)
        grads, pos, neg = efl_grad_triton(levels, targets, torch.tensor(1.0, device=DEVICE), config)
        torch.testing.assert_close(loss.cpu().double(), ref_loss, rtol=1e-5, atol=0, msg=str(config))
        grad_rows = as_rows([g.cpu() for g in grads], num_anchors, 7).double()
        torch.testing.assert_close(grad_rows, ref_grad, rtol=1e-5, atol=1e-9, msg=str(config))
        torch.testing.assert_close(pos.cpu().double(), ref_pos, rtol=1e-5, atol=1e-12, msg=str(config))
        torch.testing.assert_close(neg.cpu().double(), ref_neg, rtol=1e-5, atol=1e-12, msg=str(config))


@pytest.mark.skipif(CUDA or INTERPRETED, reason="the GPU runs the Triton cases directly")
def test_triton_kernel_in_the_interpreter():
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, FALLBACK_TESTS,
         "-k", "triton and not interpreter"],  # fmt: skip
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout.splitlines()[-1], run.stdout[-2000:]


@pytest.mark.skipif(not CUDA, reason="needs a GPU")
def test_cuda_large_problem_and_amp_statistics_do_not_depend_on_the_loss_scale():
    g = torch.Generator(device="cuda").manual_seed(0)
    num_classes = 1203
    levels = [torch.randn(2, 2 * num_classes, h, w, device="cuda", generator=g) - 4 for h, w in ((100, 168), (50, 84))]
    num_rows = (100 * 168 + 50 * 84) * 2
    labels = torch.full((2, num_rows), num_classes, device="cuda")
    labels[:, ::97] = torch.randint(0, num_classes, (2, len(range(0, num_rows, 97))), device="cuda", generator=g)
    labels[:, 1::13] = -1
    stats = {}
    for name, dtype, scale in (("fp32", torch.float32, 1.0), ("fp16", torch.float16, 1.0), ("fp16x", torch.float16, 65536.0)):
        module = EqualizedFocalLoss(num_classes).cuda().train()
        leaves = [x.to(dtype).requires_grad_() for x in levels]
        (module.forward_dense(leaves, labels, 100.0) * scale).backward()
        assert all(torch.isfinite(x.grad).all() for x in leaves)
        stats[name] = (module.pos_grad.clone(), module.neg_grad.clone())
    torch.testing.assert_close(stats["fp16"], stats["fp16x"], rtol=0, atol=0)
    torch.testing.assert_close(stats["fp16"], stats["fp32"], rtol=2e-3, atol=1e-6)

    reference = EqualizedFocalLoss(num_classes, implementation="torch").cuda().train()
    triton = EqualizedFocalLoss(num_classes, implementation="triton").cuda().train()
    small = [x[:, :, :20, :30].contiguous() for x in levels]
    small_labels = labels[:, : (20 * 30 + 20 * 30) * 2]
    for module in (reference, triton):
        module.forward_dense([x.requires_grad_() for x in small], small_labels, 7.0).backward()
    torch.testing.assert_close(triton.pos_grad, reference.pos_grad, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(triton.neg_grad, reference.neg_grad, rtol=1e-5, atol=1e-9)


@pytest.mark.skipif(not CUDA, reason="needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_autotuned_kernel_matches_the_float64_oracle_at_lvis_scale(dtype):
    from efl.losses.triton_kernel import _efl_kernel

    _efl_kernel.cache.clear()  # tune again: every configuration runs on these buffers before the kept one
    num_classes = 1203
    levels, labels = dense_problem(num_anchors=2, num_classes=num_classes, sizes=((20, 30), (10, 15), (1, 1)), seed=18)
    levels = [x - 4.0 for x in levels]
    pos_neg = torch.rand(num_classes, generator=torch.Generator().manual_seed(19))
    module = EqualizedFocalLoss(num_classes, implementation="triton").cuda().train()
    module.pos_neg.copy_(pos_neg)
    loss, grads = run_dense(module, levels, labels, normalizer=50.0, upstream=2.0, dtype=dtype)
    assert len(_efl_kernel.cache) > 0 and all(g.dtype == dtype for g in grads)
    rounded = [x.to(dtype).float() for x in levels]
    ref_loss, ref_grad, ref_pos, ref_neg = reference_efl(
        as_rows(rounded, 2, num_classes), labels.reshape(-1), pos_neg, normalizer=50.0
    )
    grad_rtol = 1e-5 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(module.pos_grad.cpu().double(), ref_pos, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(module.neg_grad.cpu().double(), ref_neg, rtol=1e-5, atol=1e-12)
    grad_rows = as_rows([g.float() for g in grads], 2, num_classes).double()
    torch.testing.assert_close(grad_rows, 2.0 * ref_grad, rtol=grad_rtol, atol=1e-7)
