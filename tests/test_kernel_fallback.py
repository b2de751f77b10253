"""
"auto" cannot be stopped by its preferred kernel (Triton on CUDA): a kernel that raises, or that disagrees with the
chunked PyTorch path on the first call's check, is replaced by that path with one warning; a kernel named
explicitly is not guarded. The preferred kernel is injected here, so these run on the CPU; the Triton cases run
on a GPU, or on the CPU under Triton's interpreter through test_kernels.py::test_triton_kernel_in_the_interpreter.
"""
import logging

import pytest
import torch

from efl import EqualizedFocalLoss, EqualizedQualityFocalLoss
from efl.losses import function
from efl.losses.torch_kernel import ChunkedTorchKernel
from oracle import reference_efl
from test_kernels import CUDA, DEVICE, INTERPRETED, as_rows, dense_problem, run_dense, run_eqfl

needs_triton = pytest.mark.skipif(not (CUDA or INTERPRETED), reason="needs a GPU (or Triton's interpreter)")


def clear_kernel_caches():
    for cache in (function._kernel, function._importable, function._checked_kernel):
        cache.cache_clear()


@pytest.fixture
def prefer(monkeypatch):
    """prefer(make): "auto" on this device prefers the kernel ``make()`` builds, as it prefers Triton on CUDA."""

    def install(make):
        monkeypatch.setitem(function.KERNELS, "candidate", make)
        monkeypatch.setitem(function.AUTO, DEVICE, "candidate")
        clear_kernel_caches()

    monkeypatch.delenv("EFL_IMPLEMENTATION", raising=False)
    yield install
    clear_kernel_caches()


class CountingKernel(ChunkedTorchKernel):
    """The chunked PyTorch path under another name, counting its calls; subclasses break it."""

    name = "candidate"

    def __init__(self):
        self.forwards = 0
        self.backwards = 0

    def forward(self, ctx, levels, targets, want_grad):
        self.forwards += 1
        return super().forward(ctx, levels, targets, want_grad)

    def backward(self, ctx, grad_output):
        self.backwards += 1
        return super().backward(ctx, grad_output)


class RaisingKernel(CountingKernel):
    def forward(self, ctx, levels, targets, want_grad):
        super().forward(ctx, levels, targets, want_grad)
        raise RuntimeError("injected: PassManager::run failed")


class ScaledStatisticsKernel(CountingKernel):
    """Right loss and gradient, statistics off by ``factor``."""

    factor = 1.0 + 1e-3

    def backward(self, ctx, grad_output):
        grads, pos_sum, neg_sum = super().backward(ctx, grad_output)
        return grads, pos_sum * self.factor, neg_sum


class ScaledGradientKernel(CountingKernel):
    def backward(self, ctx, grad_output):
        grads, pos_sum, neg_sum = super().backward(ctx, grad_output)
        return [g * 1.01 for g in grads], pos_sum, neg_sum


class BackwardRaisingAfterCheckKernel(CountingKernel):
    """Passes the check (its first backward), then fails in every backward: a failure only real shapes show."""

    def backward(self, ctx, grad_output):
        if self.backwards >= 1:
            raise RuntimeError("injected: out of resources in backward")
        return super().backward(ctx, grad_output)


def result(implementation, levels, labels, dtype=None, quality=None):
    """Loss, gradients and statistics of one training call of EFL (EQFL when ``quality`` is given)."""
    levels = [x.detach().clone() for x in levels]  # fresh leaves: run_dense makes its inputs require grad
    if quality is None:
        module = EqualizedFocalLoss(7, implementation=implementation).to(DEVICE).train()
        loss, grads = run_dense(module, levels, labels, normalizer=3.0, dtype=dtype)
    else:
        module = EqualizedQualityFocalLoss(7, implementation=implementation).to(DEVICE).train()
        loss, grads = run_eqfl(module, levels, labels, quality, normalizer=3.0)
    return loss, grads, module.pos_grad.clone(), module.neg_grad.clone()


def torch_path_result(levels, labels, **kwargs):
    return result("torch", levels, labels, **kwargs)


def auto_result(levels, labels, **kwargs):
    return result("auto", levels, labels, **kwargs)


def assert_same(result, expected):
    loss, grads, pos, neg = result
    assert torch.equal(loss, expected[0])
    assert all(torch.equal(a, b) for a, b in zip(grads, expected[1]))
    assert torch.equal(pos, expected[2]) and torch.equal(neg, expected[3])


def fallback_warnings(caplog):
    return [r.getMessage() for r in caplog.records if "chunked PyTorch path" in r.getMessage()]


@pytest.mark.parametrize(
    "kernel,words",
    [
        (RaisingKernel, ["failed (RuntimeError: injected: PassManager::run failed)"]),
        (ScaledStatisticsKernel, ["disagrees", "positive statistics 1.0e-03 > 1e-04"]),
        (ScaledGradientKernel, ["disagrees", "gradient 1.0e-02"]),
        (BackwardRaisingAfterCheckKernel, ["failed (RuntimeError: injected: out of resources in backward)"]),
    ],
)
def test_auto_trains_on_the_torch_path_with_one_warning_when_its_kernel_fails(prefer, caplog, kernel, words):
    candidate = kernel()
    prefer(lambda: candidate)
    levels, labels = dense_problem(seed=11)
    expected = torch_path_result(levels, labels)
    with caplog.at_level(logging.WARNING, logger="efl.losses.function"):
        assert_same(auto_result(levels, labels), expected)
        calls = candidate.forwards, candidate.backwards
        assert_same(auto_result(levels, labels), expected)
    assert (candidate.forwards, candidate.backwards) == calls  # not tried again
    (message,) = fallback_warnings(caplog)
    assert "candidate kernel" in message and "IMPLEMENTATION" in message
    assert all(w in message for w in words), message


def test_auto_uses_a_kernel_that_agrees_and_checks_it_once_per_dtype(prefer, caplog):
    candidate = CountingKernel()
    prefer(lambda: candidate)
    levels, labels = dense_problem(seed=12)
    with caplog.at_level(logging.WARNING, logger="efl.losses.function"):
        auto_result(levels, labels)
        assert (candidate.forwards, candidate.backwards) == (2, 2)  # the check, then the call
        auto_result(levels, labels)
        assert (candidate.forwards, candidate.backwards) == (3, 3)
        auto_result(levels, labels, dtype=torch.bfloat16)  # another dtype: checked again
        assert (candidate.forwards, candidate.backwards) == (5, 5)
        auto_result(levels, labels, quality=torch.rand(labels.shape))  # EQFL: too
        assert (candidate.forwards, candidate.backwards) == (7, 7)
    assert not fallback_warnings(caplog)


def test_the_check_tolerates_float32_rounding_only(prefer, caplog):
    ScaledStatisticsKernel.factor = 1.0 + 1e-6
    try:
        candidate = ScaledStatisticsKernel()
        prefer(lambda: candidate)
        levels, labels = dense_problem(seed=13)
        with caplog.at_level(logging.WARNING, logger="efl.losses.function"):
            auto_result(levels, labels)
        assert candidate.backwards == 2 and not fallback_warnings(caplog)
    finally:
        ScaledStatisticsKernel.factor = 1.0 + 1e-3


def test_out_of_memory_is_raised_not_hidden(prefer):
    class OutOfMemoryKernel(CountingKernel):
        def forward(self, ctx, levels, targets, want_grad):
            raise torch.cuda.OutOfMemoryError("injected")

    prefer(OutOfMemoryKernel)
    levels, labels = dense_problem()
    with pytest.raises(torch.cuda.OutOfMemoryError):
        auto_result(levels, labels)


def test_the_check_problem_has_the_calls_layout_classes_and_anchors():
    levels, labels = dense_problem(num_anchors=3)
    module = EqualizedFocalLoss(7)
    targets = function.DenseTargets(labels, None, module.focusing_factors(), torch.ones(7), torch.ones(7), 3)
    rows = torch.zeros(50, 7).t()[None, :, :, None]  # forward()'s (R, C) logits: classes contiguous
    for like, classes_contiguous in ((levels[0], False), (rows, True), (levels[0].half(), False)):
        problem, problem_targets = function.check_problem(like, targets)
        assert all(x.shape[:2] == (2, 21) and x.dtype == like.dtype for x in problem)
        assert all((x.stride(1) == 1) == classes_contiguous for x in problem if x[0, 0].numel() > 1)
        assert problem_targets.labels.shape == (2, (32 + 16 + 1) * 3) and problem_targets.num_anchors == 3
        for value in (-1, 3, 7):  # ignored, positive and background anchors
            assert (problem_targets.labels == value).any()


@needs_triton
def test_triton_named_explicitly_raises_its_errors_and_auto_falls_back(monkeypatch, caplog):
    from efl.losses import triton_kernel

    def broken(*args, **kwargs):
        raise RuntimeError("injected: triton launch failed")

    monkeypatch.setattr(triton_kernel, "_launch", broken)
    monkeypatch.setitem(function.AUTO, DEVICE, "triton")  # on the CPU, under the interpreter
    monkeypatch.delenv("EFL_IMPLEMENTATION", raising=False)
    clear_kernel_caches()
    levels, labels = dense_problem(seed=14)
    try:
        with pytest.raises(RuntimeError, match="injected"):
            run_dense(EqualizedFocalLoss(7, implementation="triton").train(), levels, labels, normalizer=3.0)
        with caplog.at_level(logging.WARNING, logger="efl.losses.function"):
            assert_same(auto_result(levels, labels), torch_path_result(levels, labels))
        (message,) = fallback_warnings(caplog)
        assert "triton kernel failed (RuntimeError: injected: triton launch failed)" in message
    finally:
        clear_kernel_caches()


@needs_triton
def test_triton_passes_the_check_and_auto_uses_it(monkeypatch, caplog):
    monkeypatch.setitem(function.AUTO, DEVICE, "triton")
    monkeypatch.delenv("EFL_IMPLEMENTATION", raising=False)
    clear_kernel_caches()
    levels, labels = dense_problem(seed=15)
    try:
        with caplog.at_level(logging.WARNING, logger="efl.losses.function"):
            loss, grads, pos, neg = auto_result(levels, labels)
        assert not fallback_warnings(caplog)
        checked = function.resolve_kernel("auto", torch.device(DEVICE))
        assert checked.failure is None and len(checked._checked) == 1
        ref_loss, ref_grad, ref_pos, ref_neg = reference_efl(
            as_rows(levels, 3, 7), labels.reshape(-1), torch.ones(7), normalizer=3.0
        )
        torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=0)
        torch.testing.assert_close(as_rows(grads, 3, 7).double(), ref_grad, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(pos.cpu().double(), ref_pos, rtol=1e-5, atol=1e-12)
        torch.testing.assert_close(neg.cpu().double(), ref_neg, rtol=1e-5, atol=1e-12)
    finally:
        clear_kernel_caches()
