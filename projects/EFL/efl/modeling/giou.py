"""The GIoU box loss (Rezatofighi et al., CVPR 2019), computable without a host sync."""
import torch
from torch import Tensor

__all__ = ["giou_loss"]


def _area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def giou_loss(boxes: Tensor, targets: Tensor, eps: float = 1e-7) -> Tensor:
    """
    (K,) 1 - GIoU of (K, 4) XYXY boxes with their (K, 4) targets, GIoU = IoU - |hull \\ union| / |hull|.

    fvcore's giou_loss computes the same values and gradients (tested), but checks its boxes with asserts and fills
    the intersection by boolean-mask indexing, each of which costs a GPU a host sync.
    """
    overlap = torch.cat((torch.max(boxes[:, :2], targets[:, :2]), torch.min(boxes[:, 2:], targets[:, 2:])), dim=1)
    hull = torch.cat((torch.min(boxes[:, :2], targets[:, :2]), torch.max(boxes[:, 2:], targets[:, 2:])), dim=1)
    overlaps = (overlap[:, 2:] > overlap[:, :2]).all(dim=1)
    intersection = torch.where(overlaps, _area(overlap), torch.zeros_like(overlaps, dtype=boxes.dtype))
    union = _area(boxes) + _area(targets) - intersection
    iou = intersection / (union + eps)
    enclosing = _area(hull)
    return 1 - (iou - (enclosing - union) / (enclosing + eps))
