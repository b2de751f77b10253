"""
ATSS anchor assignment (Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free Detection via
Adaptive Training Sample Selection", CVPR 2020), as the paper's improved baseline uses it.
"""
from typing import List, Tuple

import torch
from torch import Tensor

from detectron2.structures import Boxes, pairwise_iou

__all__ = ["atss_assign"]


def _centers(boxes: Tensor) -> Tensor:
    return (boxes[:, :2] + boxes[:, 2:]) / 2


@torch.no_grad()
def atss_assign(
    anchors: List[Boxes], gt_boxes: Boxes, topk: int, *, min_box_side: float = 1.0, center_margin: float = 0.01
) -> Tuple[Tensor, Tensor]:
    """
    For every ground-truth box: on each level, the ``topk`` anchors whose centres are closest to the box centre
    are candidates (ties broken by anchor index); a candidate is positive when its IoU with the box is at least
    the mean + standard deviation of all the box's candidates' IoUs and its centre lies more than
    ``center_margin`` inside every edge of the box. Boxes with a side of ``min_box_side`` or less take part in
    nothing (they get no anchor). An anchor positive for several boxes goes to the one it overlaps most (the
    lowest box index on equal IoU). The defaults are the official EFL code's rules; ``min_box_side=0,
    center_margin=0`` keep every box and accept any centre strictly inside.

    Args:
        anchors: per-level (Ri, 4) anchors, concatenated in this order.
        gt_boxes: (G, 4) boxes of one image.
        topk: candidates per level and box.

    Returns:
        matched (R,) long: the index of the assigned box in ``gt_boxes``, -1 for a negative anchor.
        iou (R,) float: the IoU of each anchor with its assigned box (0 for negatives).
    """
    all_anchors = Boxes.cat(anchors)
    num_anchors = len(all_anchors)
    device = all_anchors.tensor.device
    matched = torch.full((num_anchors,), -1, dtype=torch.long, device=device)
    if len(gt_boxes) == 0:
        return matched, torch.zeros(num_anchors, device=device)
    box = gt_boxes.tensor  # (G, 4)
    # A box too small to keep takes part in nothing: it gets no positive below, and so competes for no anchor.
    # (A mask rather than dropping it, which would cost a GPU a host sync.)
    kept = (box[:, 2:] - box[:, :2] > min_box_side).all(dim=1)  # (G,)

    ious = pairwise_iou(all_anchors, gt_boxes)  # (R, G)
    # exact distances (no matrix-product shortcut), so that equidistant anchors tie exactly
    anchor_centers = _centers(all_anchors.tensor)
    distances = torch.cdist(anchor_centers, _centers(box), compute_mode="donot_use_mm_for_euclid_dist")  # (R, G)
    candidates = []
    start = 0
    for level in anchors:
        end = start + len(level)
        k = min(topk, len(level))
        order = distances[start:end].argsort(dim=0, stable=True)[:k]  # (k, G)
        candidates.append(order + start)
        start = end
    candidates = torch.cat(candidates)  # (K, G)

    candidate_ious = ious.gather(0, candidates)
    threshold = candidate_ious.mean(dim=0) + candidate_ious.std(dim=0)
    is_positive = candidate_ious >= threshold

    centers = anchor_centers[candidates]  # (K, G, 2)
    # distances from the centre to the left, top, right and bottom edges: (K, G, 4)
    edges = torch.cat([centers - box[:, :2], box[:, 2:] - centers], dim=-1)
    is_positive &= (edges.min(dim=-1).values > center_margin) & kept

    # Keep, for each anchor, the IoU with the boxes it is a positive of; then the best of them. (Masks rather than
    # boolean-mask indexing, which costs a GPU a host sync; a box's candidates are distinct anchors.)
    positive_ious = torch.full_like(ious, -1.0)
    positive_ious.scatter_(0, candidates, torch.where(is_positive, candidate_ious, -1.0))
    best_iou, best_gt = positive_ious.max(dim=1)
    assigned = best_iou >= 0
    matched = torch.where(assigned, best_gt, matched)
    return matched, torch.where(assigned, best_iou, torch.zeros_like(best_iou))
