"""What every code path of the loss needs besides the logits."""
from typing import NamedTuple, Optional

from torch import Tensor

__all__ = ["DenseTargets"]


class DenseTargets(NamedTuple):
    """Labels, soft targets and per-class factors of one call, shared by every code path."""

    labels: Tensor  # (N, R) int: -1 ignore, 0..C-1 class, C background; R = sum of H*W*A, rows (level, y, x, a)
    quality: Optional[Tensor]  # (N, R) float32 soft targets of the positive cells (EQFL), or None (EFL: 1)
    gamma: Tensor  # (C,) float32 focusing factors
    w_pos: Tensor  # (C,) float32 weights of positive cells (alpha * gamma_j / gamma_b / normalizer for EFL)
    w_neg: Tensor  # (C,) float32 weights of negative cells
    num_anchors: int  # A
