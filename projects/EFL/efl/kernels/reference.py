"""
EFL and EQFL written term by term, differentiated by autograd: the slow, obvious path to compare the fast ones with
(``MODEL.EFL.IMPLEMENTATION reference`` or ``EFL_IMPLEMENTATION=reference``). It builds the dense one-hot
target and several (R, C) temporaries, which is what the fast paths avoid.
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import DenseTargets

__all__ = ["efl_reference"]


def efl_reference(
    levels: Sequence[Tensor], targets: DenseTargets, want_grad: bool
) -> Tuple[Tensor, List[Tensor], Tensor, Tensor]:
    """Same arguments and results as :func:`efl.kernels.torch_efl.efl_torch`."""
    labels, quality, gamma, w_pos, w_neg, num_anchors = targets
    num_classes = gamma.numel()

    def as_rows(t: Tensor) -> Tensor:  # (N, A*C, H, W) -> (N, H*W*A, C): detectron2's anchor order
        return t.view(t.shape[0], num_anchors, num_classes, -1).permute(0, 3, 1, 2).flatten(1, 2)

    with torch.enable_grad():
        leaves = [x.detach().float().requires_grad_() for x in levels]
        logits = torch.cat([as_rows(x) for x in leaves], dim=1).reshape(-1, num_classes)
        flat_labels = labels.reshape(-1)
        valid = flat_labels >= 0
        target = F.one_hot(flat_labels.clamp(min=0), num_classes + 1)[:, :num_classes].float()
        target = target * valid[:, None]
        positive = target > 0
        p = torch.sigmoid(logits)
        coef = torch.where(positive, w_pos, w_neg)
        if quality is None:  # EFL: alpha_t w (1 - p_t)^gamma BCE(z, y)
            modulator = (1 - torch.where(positive, p, 1 - p)) ** gamma
        else:  # EQFL: w |y - p|^gamma BCE(z, y), y the quality of a positive cell
            target = target * quality.reshape(-1, 1)
            modulator = (target - p).abs() ** gamma
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        loss = (coef * modulator * bce * valid[:, None]).sum()
        if not want_grad:
            return loss.detach(), [], gamma.new_zeros(num_classes), gamma.new_zeros(num_classes)
        grads = torch.autograd.grad(loss, leaves)
    magnitude = torch.cat([as_rows(g) for g in grads], dim=1).reshape(-1, num_classes).abs()
    pos_sum = (magnitude * positive).sum(dim=0)
    neg_sum = (magnitude * ~positive * valid[:, None]).sum(dim=0)
    return loss.detach(), [g.to(x.dtype) for g, x in zip(grads, levels)], pos_sum, neg_sum
