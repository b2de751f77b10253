"""
The autograd Function behind every EFL variant, and the table of its code paths (kernels).

A kernel computes, from per-level dense logits and :class:`DenseTargets`, the loss in forward and, in backward,
``grad_output`` * dL/dlogits together with the per-class sums of |dL/dz| over positive and negative cells. The
sums are taken from the loss's own gradient, before ``grad_output``: loss weights and AMP's loss scale never
reach them.
"""
import functools
import os
from typing import Callable, Dict, List, Optional, Protocol, Sequence, Tuple

import torch
from torch import Tensor

from .targets import DenseTargets
from .torch_kernel import ChunkedTorchKernel

__all__ = ["DenseKernel", "IMPLEMENTATIONS", "KERNELS", "StatisticsSink", "dense_efl", "resolve_kernel"]

StatisticsSink = Callable[[Tensor, Tensor], None]


class DenseKernel(Protocol):
    """One code path of the loss. ``ctx`` is the autograd context of the call, for what backward needs."""

    name: str

    def forward(self, ctx, levels: Sequence[Tensor], targets: DenseTargets, want_grad: bool) -> Tensor:
        """The scalar float32 loss of per-level (N, A*C, H, W) logits."""

    def backward(self, ctx, grad_output: Tensor) -> Tuple[List[Tensor], Tensor, Tensor]:
        """grad_output * dL/dlogits per level, and the (C,) |dL/dz| sums of positive and of negative cells."""


def _triton_kernel() -> DenseKernel:
    from .triton_kernel import TritonKernel  # imports triton: optional, and only needed on CUDA

    return TritonKernel()


# name -> constructor. "auto" picks Triton on CUDA when it imports, else chunked PyTorch.
KERNELS: Dict[str, Callable[[], DenseKernel]] = {"torch": ChunkedTorchKernel, "triton": _triton_kernel}
IMPLEMENTATIONS = ("auto",) + tuple(KERNELS)


@functools.lru_cache(maxsize=None)
def _kernel(name: str) -> DenseKernel:
    return KERNELS[name]()


@functools.lru_cache(maxsize=None)
def _triton_available() -> bool:
    try:
        _kernel("triton")
    except ImportError:
        return False
    return True


def resolve_kernel(requested: str, device: torch.device) -> DenseKernel:
    """
    The kernel for ``requested`` (one of IMPLEMENTATIONS) on ``device``. The environment variable
    EFL_IMPLEMENTATION overrides the choice made in code or config.
    """
    name = os.environ.get("EFL_IMPLEMENTATION", requested)
    if name not in IMPLEMENTATIONS:
        raise ValueError(
            f"EFL implementation must be one of {', '.join(IMPLEMENTATIONS)} (MODEL.EFL.IMPLEMENTATION or "
            f"$EFL_IMPLEMENTATION), got {name!r}"
        )
    if name == "auto":
        name = "triton" if device.type == "cuda" and _triton_available() else "torch"
    elif name == "triton":
        if not _triton_available():
            raise ValueError("EFL implementation 'triton' needs the triton package, which does not import here")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("EFL implementation 'triton' needs CUDA tensors (or TRITON_INTERPRET=1)")
    return _kernel(name)


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
