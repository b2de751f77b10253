"""
The autograd Function behind every EFL variant, and the table of its code paths (kernels).

A kernel computes, from per-level dense logits and :class:`DenseTargets`, the loss in forward and, in backward,
``grad_output`` * dL/dlogits together with the per-class sums of |dL/dz| over positive and negative cells. The
sums are taken from the loss's own gradient, before ``grad_output``: loss weights and AMP's loss scale never
reach them.

"auto" runs, on a device type that AUTO names a kernel for (Triton on CUDA), that kernel inside a
:class:`CheckedKernel`: checked once against the chunked PyTorch path, which replaces it if it fails.
"""
import functools
import logging
import os
from typing import Callable, Dict, List, Optional, Protocol, Sequence, Set, Tuple

import torch
from torch import Tensor

from .targets import DenseTargets
from .torch_kernel import ChunkedTorchKernel

__all__ = [
    "AUTO",
    "CheckedKernel",
    "DenseKernel",
    "IMPLEMENTATIONS",
    "KERNELS",
    "StatisticsSink",
    "dense_efl",
    "resolve_kernel",
    "run_kernel",
]

logger = logging.getLogger(__name__)

StatisticsSink = Callable[[Tensor, Tensor], None]


class DenseKernel(Protocol):
    """
    One code path of the loss. ``ctx`` is the autograd context of the call, for what backward needs: attributes
    and save_for_backward/saved_tensors, which is all that its stand-in offers outside autograd (run_kernel).
    """

    name: str

    def forward(self, ctx, levels: Sequence[Tensor], targets: DenseTargets, want_grad: bool) -> Tensor:
        """The scalar float32 loss of per-level (N, A*C, H, W) logits."""

    def backward(self, ctx, grad_output: Tensor) -> Tuple[List[Tensor], Tensor, Tensor]:
        """grad_output * dL/dlogits per level, and the (C,) |dL/dz| sums of positive and of negative cells."""


def _triton_kernel() -> DenseKernel:
    from .triton_kernel import TritonKernel  # imports triton: optional, and only needed on CUDA

    return TritonKernel()


# name -> constructor.
KERNELS: Dict[str, Callable[[], DenseKernel]] = {"torch": ChunkedTorchKernel, "triton": _triton_kernel}
IMPLEMENTATIONS = ("auto",) + tuple(KERNELS)
# device type -> the kernel "auto" prefers there, guarded by a CheckedKernel; "auto" runs "torch" elsewhere.
AUTO: Dict[str, str] = {"cuda": "triton"}


@functools.lru_cache(maxsize=None)
def _kernel(name: str) -> DenseKernel:
    return KERNELS[name]()


@functools.lru_cache(maxsize=None)
def _importable(name: str) -> bool:
    try:
        _kernel(name)
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _checked_kernel(name: str) -> "CheckedKernel":
    return CheckedKernel(_kernel(name), _kernel("torch"))


def resolve_kernel(requested: str, device: torch.device) -> DenseKernel:
    """
    The kernel for ``requested`` (one of IMPLEMENTATIONS) on ``device``. The environment variable
    EFL_IMPLEMENTATION overrides the choice made in code or config. "auto" gives the kernel AUTO names for the
    device type, guarded by :class:`CheckedKernel` (it cannot stop training), and chunked PyTorch elsewhere; a
    kernel named explicitly is used as it is, and its errors are raised.
    """
    name = os.environ.get("EFL_IMPLEMENTATION", requested)
    if name not in IMPLEMENTATIONS:
        raise ValueError(
            f"EFL implementation must be one of {', '.join(IMPLEMENTATIONS)} (MODEL.EFL.IMPLEMENTATION or "
            f"$EFL_IMPLEMENTATION), got {name!r}"
        )
    if name == "auto":
        preferred = AUTO.get(device.type)
        if preferred is None or not _importable(preferred):
            return _kernel("torch")
        return _checked_kernel(preferred)
    if name == "triton":
        if not _importable("triton"):
            raise ValueError("EFL implementation 'triton' needs the triton package, which does not import here")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("EFL implementation 'triton' needs CUDA tensors (or TRITON_INTERPRET=1)")
    return _kernel(name)


class _Context:
    """Stands in for an autograd context where a kernel runs outside autograd."""

    def save_for_backward(self, *tensors: Tensor) -> None:
        self.saved_tensors = tensors


def run_kernel(
    kernel: DenseKernel, levels: Sequence[Tensor], targets: DenseTargets, grad_output: Tensor
) -> Tuple[Tensor, List[Tensor], Tensor, Tensor]:
    """Forward and backward of ``kernel`` outside autograd: loss, grad_output * dL/dlogits, pos_sum, neg_sum."""
    ctx = _Context()
    loss = kernel.forward(ctx, levels, targets, True)
    grads, pos_sum, neg_sum = kernel.backward(ctx, grad_output)
    return loss, grads, pos_sum, neg_sum


def check_problem(like: Tensor, targets: DenseTargets) -> Tuple[List[Tensor], DenseTargets]:
    """
    A small random problem shaped like a real call: the number of classes and anchors of ``targets``, 2 images,
    3 levels of 4x8, 2x8 and 1x1 positions (partial tiles, a 1x1 level; multiples of 16, like most real levels, so
    that Triton compiles few other specialisations), positive, background and ignored anchors, and the device,
    dtype and layout (classes contiguous or positions contiguous) of ``like``.
    """
    num_classes, num_anchors = targets.gamma.numel(), targets.num_anchors
    g = torch.Generator().manual_seed(0)
    sizes = ((4, 8), (2, 8), (1, 1))
    layout = torch.channels_last if like.stride(1) == 1 and like.shape[1] > 1 else torch.contiguous_format
    levels = [
        (torch.randn(2, num_anchors * num_classes, h, w, generator=g) * 4).to(like.device, like.dtype)
        .contiguous(memory_format=layout)
        for h, w in sizes
    ]  # fmt: skip
    num_rows = sum(h * w for h, w in sizes) * num_anchors
    labels = torch.randint(0, num_classes, (2, num_rows), generator=g)
    u = torch.rand(2, num_rows, generator=g)
    labels[u < 0.7] = num_classes
    labels[u < 0.1] = -1
    quality = None if targets.quality is None else torch.rand(2, num_rows, generator=g).to(like.device)
    gamma = 2.0 + 8.0 * torch.rand(num_classes, generator=g)
    device = targets.gamma.device
    problem = DenseTargets(
        labels.to(device, targets.labels.dtype), quality, gamma.to(device),
        (0.25 / 7.0 * gamma / 2.0).to(device), (0.75 / 7.0 * gamma / 2.0).to(device), num_anchors,
    )  # fmt: skip
    return levels, problem


def relative_error(value: Tensor, reference: Tensor) -> float:
    """max |value - reference| / |reference| elementwise, where |reference| counts as at least 1e-3 of its largest."""
    value, reference = value.double(), reference.double()
    scale = reference.abs().clamp(min=1e-3 * float(reference.abs().max()) if reference.numel() else 0.0)
    error = (value - reference).abs() / scale.clamp(min=1e-30)
    return float(error.max()) if error.numel() else 0.0


class CheckedKernel:
    """
    The kernel "auto" prefers on a device (Triton on CUDA), made unable to stop training. Before its first use for
    a new (device, dtype, variant, layout) it runs a small random problem shaped like the call
    (:func:`check_problem`) and must agree with the chunked PyTorch path to ``RTOL`` relative on the loss, the
    gradient and the statistics (to the rounding of the gradient's dtype, where that is coarser). If it disagrees,
    or raises anything but an out-of-memory error (it fails to compile or to launch), one warning names the error,
    and this call and every later one run the chunked PyTorch path instead.
    """

    RTOL = 1e-4

    def __init__(self, preferred: DenseKernel, fallback: DenseKernel):
        self.preferred = preferred
        self.fallback = fallback
        self.name = preferred.name
        self.failure: Optional[str] = None  # why the preferred kernel is no longer used
        self._checked: Set[Tuple] = set()

    def forward(self, ctx, levels: Sequence[Tensor], targets: DenseTargets, want_grad: bool) -> Tensor:
        ctx.efl_kernel = self.fallback
        if self.failure is None:
            try:
                if self._agrees(levels[0], targets):
                    loss = self.preferred.forward(ctx, levels, targets, want_grad)
                    ctx.efl_kernel, ctx.efl_inputs = self.preferred, (levels, targets)
                    return loss
            except Exception as e:  # noqa: BLE001 - any failure of the preferred kernel means: fall back
                self._give_up(e)
        return self.fallback.forward(ctx, levels, targets, want_grad)

    def backward(self, ctx, grad_output: Tensor) -> Tuple[List[Tensor], Tensor, Tensor]:
        if ctx.efl_kernel is self.preferred:
            try:
                return self.preferred.backward(ctx, grad_output)
            except Exception as e:  # noqa: BLE001
                self._give_up(e)
            levels, targets = ctx.efl_inputs
            return run_kernel(self.fallback, levels, targets, grad_output)[1:]
        return self.fallback.backward(ctx, grad_output)

    def _agrees(self, like: Tensor, targets: DenseTargets) -> bool:
        key = (like.device, like.dtype, targets.quality is not None, like.stride(1) == 1)
        if key in self._checked:
            return True
        levels, problem = check_problem(like, targets)
        grad_output = torch.tensor(2.0, device=like.device)
        ours = run_kernel(self.preferred, levels, problem, grad_output)
        reference = run_kernel(self.fallback, levels, problem, grad_output)
        grad_rtol = max(self.RTOL, 2 * torch.finfo(like.dtype).eps)
        errors = {
            "loss": (relative_error(ours[0], reference[0]), self.RTOL),
            "gradient": (max(relative_error(a, b) for a, b in zip(ours[1], reference[1])), grad_rtol),
            "positive statistics": (relative_error(ours[2], reference[2]), self.RTOL),
            "negative statistics": (relative_error(ours[3], reference[3]), self.RTOL),
        }
        wrong = [f"{what} {error:.1e} > {rtol:.0e}" for what, (error, rtol) in errors.items() if not error <= rtol]
        if wrong:
            self._give_up(
                f"disagrees with the chunked PyTorch path on a small random problem ({like.dtype} logits on "
                f"{like.device}; relative error of the {', '.join(wrong)})"
            )
            return False
        self._checked.add(key)
        return True

    def _give_up(self, reason) -> None:
        if isinstance(reason, torch.cuda.OutOfMemoryError):
            raise reason
        if isinstance(reason, Exception):
            message = f"{type(reason).__name__}: {reason}"
            if len(message) > 2000:
                message = message[:2000] + " [...]"
            reason = f"failed ({message})"
        self.failure = reason
        logger.warning(
            f"EFL: the {self.name} kernel {reason}. Training continues on the chunked PyTorch path (correct, "
            f"slower). To use the {self.name} kernel anyway and see its errors, set MODEL.EFL.IMPLEMENTATION "
            f"{self.name} (or $EFL_IMPLEMENTATION={self.name})."
        )


class _DenseEFL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, targets: DenseTargets, kernel: DenseKernel, sink: Optional[StatisticsSink], *levels: Tensor):
        ctx.kernel = kernel
        ctx.sink = sink
        return kernel.forward(ctx, levels, targets, any(ctx.needs_input_grad[3:]))

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        grads, pos_sum, neg_sum = ctx.kernel.backward(ctx, grad_output)
        if ctx.sink is not None:
            ctx.sink(pos_sum, neg_sum)
        return (None, None, None) + tuple(grads)


def dense_efl(
    levels: Sequence[Tensor], targets: DenseTargets, kernel: DenseKernel, sink: Optional[StatisticsSink]
) -> Tensor:
    """The loss of per-level (N, A*C, H, W) logits; ``sink(pos_sum, neg_sum)`` receives the statistics in backward."""
    return _DenseEFL.apply(targets, kernel, sink, *levels)
