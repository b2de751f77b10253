"""ATSS assignment on hand-made boxes with known answers, and against a loop-by-loop reading of the rule."""
import math
import statistics

import pytest
import torch

from detectron2.structures import Boxes

from efl.modeling import atss_assign


def grid_anchors(stride, cells, sizes):
    """Anchors of one level in detectron2's order: (y, x, anchor), centred at ((x + 0.5) s, (y + 0.5) s)."""
    boxes = []
    for y in range(cells):
        for x in range(cells):
            cx, cy = (x + 0.5) * stride, (y + 0.5) * stride
            for size in sizes:
                boxes.append([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2])
    return Boxes(torch.tensor(boxes))


def test_box_on_an_anchor_takes_only_that_anchor():
    # 4 x 4 anchors of size 16 at centres 4, 12, 20, 28. The box is anchor 5 (y 1, x 1). Candidates: anchor 5
    # (distance 0) and, of the four at distance 8, the lowest indices 1, 4, 6. IoUs 1, 1/3, 1/3, 1/3: mean 0.5,
    # std 1/3, threshold 5/6, so only anchor 5.
    anchors = [grid_anchors(8, 4, [16])]
    matched, iou = atss_assign(anchors, Boxes(torch.tensor([[4.0, 4.0, 20.0, 20.0]])), topk=4)
    assert matched.tolist() == [-1] * 5 + [0] + [-1] * 10
    assert iou[5] == pytest.approx(1.0) and iou.sum() == pytest.approx(1.0)


def test_box_smaller_than_any_anchor_takes_the_anchor_whose_centre_it_holds():
    # A 4 x 4 box around (12, 12): IoU 1/16 with anchor 5 and 8/264 with anchors 1, 4, 6, whose centres lie
    # outside the box anyway. Threshold = mean + std = 0.0545 < 1/16.
    anchors = [grid_anchors(8, 4, [16])]
    matched, iou = atss_assign(anchors, Boxes(torch.tensor([[10.0, 10.0, 14.0, 14.0]])), topk=4)
    assert (matched >= 0).nonzero().flatten().tolist() == [5]
    assert iou[5] == pytest.approx(1 / 16)


def test_box_holding_no_anchor_centre_gets_no_anchor():
    anchors = [grid_anchors(8, 4, [16])]
    matched, _ = atss_assign(anchors, Boxes(torch.tensor([[0.0, 0.0, 3.0, 3.0]])), topk=4)
    assert (matched == -1).all()


def test_anchor_wanted_by_two_boxes_goes_to_the_one_it_overlaps_most():
    anchors = [grid_anchors(8, 4, [16])]
    boxes = Boxes(torch.tensor([[4.0, 4.0, 20.0, 22.0], [4.0, 4.0, 20.0, 20.0]]))
    matched, iou = atss_assign(anchors, boxes, topk=4)
    assert matched[5] == 1 and iou[5] == pytest.approx(1.0)


def test_equal_overlap_goes_to_the_lower_box_index_and_two_anchor_shapes_tie_by_index():
    # Two anchors per location share their centre: the closest candidates are both shapes of the same cells.
    anchors = [grid_anchors(8, 4, [12, 16])]
    boxes = Boxes(torch.tensor([[4.0, 4.0, 20.0, 20.0], [4.0, 4.0, 20.0, 20.0]]))
    matched, _ = atss_assign(anchors, boxes, topk=4)
    # candidates: both shapes at (y 1, x 1), anchors 10 and 11 (IoU 9/16 and 1), then both at (y 0, x 1),
    # anchors 2 and 3 (IoU 72/328 and 1/3): threshold 0.529 + 0.345, so only anchor 11
    assert (matched >= 0).nonzero().flatten().tolist() == [11]
    assert matched[11] == 0


def test_a_box_with_a_side_of_one_pixel_gets_no_anchor_and_indices_still_name_the_original_boxes():
    anchors = [grid_anchors(8, 4, [16])]
    # the 16 x 16 box of test_box_on_an_anchor_takes_only_that_anchor (anchor 5), after boxes 1 px wide or high,
    # each of which would take anchor 5 by itself (its centre, 1 px inside the box's edges)
    thin = [[11.5, 4.0, 12.5, 20.0], [4.0, 11.5, 20.0, 12.5], [11.5, 11.5, 12.5, 12.5]]
    for box in thin:
        matched, _ = atss_assign(anchors, Boxes(torch.tensor([box])), topk=4, min_box_side=0.0)
        assert matched[5] == 0, box
        matched, iou = atss_assign(anchors, Boxes(torch.tensor([box])), topk=4)
        assert (matched == -1).all() and (iou == 0).all(), box
    matched, iou = atss_assign(anchors, Boxes(torch.tensor(thin + [[4.0, 4.0, 20.0, 20.0]])), topk=4)
    assert matched.tolist() == [-1] * 5 + [3] + [-1] * 10
    assert iou[5] == pytest.approx(1.0)
    # just over 1 px: kept
    matched, _ = atss_assign(anchors, Boxes(torch.tensor([[11.49, 11.49, 12.51, 12.51]])), topk=4)
    assert matched[5] == 0


@pytest.mark.parametrize("inside, positive", [(0.005, False), (0.02, True)])
def test_a_positive_centre_lies_more_than_a_hundredth_of_a_pixel_inside_every_edge(inside, positive):
    # A 16 x 16 box whose left edge lies ``inside`` px left of the centre (28, 12) of anchor 7, at the grid's
    # right border. Candidates 7, 3, 11, 6 have IoUs 0.333, 0.143, 0.143, 0.000: threshold 0.291, so anchor 7 is
    # the only one above it. The same box mirrored and transposed puts the other edges next to a centre.
    anchors = [grid_anchors(8, 4, [16])]
    centres = (anchors[0].tensor[:, :2] + anchors[0].tensor[:, 2:]) / 2
    d = inside
    cases = {  # edge: (box, the centre beside that edge)
        "left": ([28 - d, 4, 44, 20], (28, 12)),
        "right": ([-12, 4, 4 + d, 20], (4, 12)),
        "top": ([4, 28 - d, 20, 44], (12, 28)),
        "bottom": ([4, -12, 20, 4 + d], (12, 4)),
    }
    for edge, (box, centre) in cases.items():
        anchor = (centres == torch.tensor(centre, dtype=torch.float32)).all(dim=1).nonzero().item()
        matched, _ = atss_assign(anchors, Boxes(torch.tensor([box])), topk=4)
        assert (matched >= 0).nonzero().flatten().tolist() == ([anchor] if positive else []), edge
        matched, _ = atss_assign(anchors, Boxes(torch.tensor([box])), topk=4, center_margin=0.0)
        assert (matched >= 0).nonzero().flatten().tolist() == [anchor], edge  # strictly inside is enough without


def test_no_boxes_means_no_positives():
    matched, iou = atss_assign([grid_anchors(8, 4, [16])], Boxes(torch.zeros(0, 4)), topk=9)
    assert (matched == -1).all() and (iou == 0).all()


def loop_reference(anchors, boxes, topk):
    """The rules read literally, one box and one anchor at a time."""
    flat = torch.cat([a.tensor for a in anchors]).tolist()
    centre = [((a[0] + a[2]) / 2, (a[1] + a[3]) / 2) for a in flat]

    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    best = {}
    for g, box in enumerate(boxes.tensor.tolist()):
        if box[2] - box[0] <= 1 or box[3] - box[1] <= 1:
            continue
        bc = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        candidates, start = [], 0
        for level in anchors:
            idx = range(start, start + len(level))
            candidates += sorted(idx, key=lambda i: (math.dist(centre[i], bc), i))[:topk]
            start += len(level)
        ious = [iou(flat[i], box) for i in candidates]
        threshold = statistics.mean(ious) + statistics.stdev(ious)
        for i, v in zip(candidates, ious):
            x, y = centre[i]
            inside = min(x - box[0], y - box[1], box[2] - x, box[3] - y) > 0.01
            if v >= threshold and inside and (i not in best or v > best[i][1]):
                best[i] = (g, v)
    return best


def test_matches_the_rule_read_literally_on_random_boxes():
    g = torch.Generator().manual_seed(0)
    anchors = [grid_anchors(8, 16, [48, 64]), grid_anchors(16, 8, [96, 128]), grid_anchors(32, 4, [192, 256])]
    xy = torch.rand(12, 2, generator=g) * 100
    wh = torch.rand(12, 2, generator=g) * 60 + 4
    wh[[0, 5], 0] = torch.tensor([0.5, 1.0])  # too thin to keep, among boxes that are kept
    wh[7, 1] = 1.0
    # a 12 x 40 box whose left edge lies 0.005 px left of the centres at x = 36, where 3 of its 6 positives
    # without the margin lie
    xy[9], wh[9] = torch.tensor([35.995, 40.0]), torch.tensor([12.0, 40.0])
    boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
    matched, iou = atss_assign(anchors, boxes, topk=18)
    expected = loop_reference(anchors, boxes, topk=18)
    assert not {0, 5, 7} & set(matched.tolist())
    assert (matched == 9).sum() == 3 and (atss_assign(anchors, boxes, topk=18, center_margin=0.0)[0] == 9).sum() == 6
    assert {i: m for i, m in enumerate(matched.tolist()) if m >= 0} == {i: g for i, (g, _) in expected.items()}
    for i, (_, v) in expected.items():
        assert iou[i] == pytest.approx(v, rel=1e-5)
    assert len(expected) > 20
