"""
The EFL part of a dense detector, in one place for every detector that uses it (EFLRetinaNet, ImprovedRetinaNet,
EFLFCOS): the classification loss with its statistics, the loss normaliser, and what is logged about them.
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from ..losses import EqualizedFocalLoss, EqualizedQualityFocalLoss

__all__ = ["CLS_LOSSES", "EFLDetectorMixin", "FREQUENCY_GROUPS", "build_cls_loss", "mean_over_processes"]

# The names of the frequency groups 0, 1 and 2 that a detector is given (LVIS's: classes in at most 10, 11 to 100
# and more than 100 training images, efl.data.frequency), as its logged scalars call them.
FREQUENCY_GROUPS = ("rare", "common", "frequent")


def _efl(cfg, num_classes: int) -> EqualizedFocalLoss:
    e = cfg.MODEL.EFL
    return EqualizedFocalLoss(
        num_classes, e.GAMMA_B, e.SCALE, e.ALPHA, e.IMPLEMENTATION, e.FOCUSING_FACTOR, e.WEIGHTING_FACTOR
    )


def _eqfl(cfg, num_classes: int) -> EqualizedQualityFocalLoss:
    e = cfg.MODEL.EFL
    return EqualizedQualityFocalLoss(
        num_classes, e.GAMMA_B, e.SCALE, e.IMPLEMENTATION, e.FOCUSING_FACTOR, e.WEIGHTING_FACTOR
    )


def _focal(cfg, num_classes: int) -> EqualizedFocalLoss:
    # EFL with s = 0 is exactly sigmoid focal loss, and keeps the statistics for comparison.
    head = cfg.MODEL.RETINANET
    return EqualizedFocalLoss(
        num_classes, head.FOCAL_LOSS_GAMMA, 0.0, head.FOCAL_LOSS_ALPHA, cfg.MODEL.EFL.IMPLEMENTATION
    )


# MODEL.EFL.LOSS -> builder(cfg, num_classes). A new variant needs a class in efl.losses and a line here.
CLS_LOSSES = {"efl": _efl, "eqfl": _eqfl, "focal": _focal}


def build_cls_loss(cfg, num_classes: int) -> EqualizedFocalLoss:
    """The classification loss that MODEL.EFL.LOSS names, with MODEL.EFL's hyper-parameters (a detector's
    ``from_config``)."""
    name = cfg.MODEL.EFL.LOSS
    if name not in CLS_LOSSES:
        raise ValueError(f"MODEL.EFL.LOSS must be one of {', '.join(CLS_LOSSES)}, got {name!r}")
    return CLS_LOSSES[name](cfg, num_classes)


def mean_over_processes(value: Tensor) -> Tensor:
    """The mean of a tensor over all processes (the official normalisers are per-GPU averages)."""
    if comm.get_world_size() > 1:
        value = value.clone()
        torch.distributed.all_reduce(value)
        value = value / comm.get_world_size()
    return value


class EFLDetectorMixin:
    """
    Mixed into a detectron2 dense detector (``class EFLRetinaNet(EFLDetectorMixin, RetinaNet)``), it owns:

    - ``cls_loss``: the classification loss (:class:`EqualizedFocalLoss` or a variant), whose buffers are the
      statistics (``cls_loss.pos_grad / neg_grad / pos_neg`` in checkpoints);
    - the loss normaliser (:meth:`step_normalizer`): the number of positive anchors averaged over processes, as
      the authors' code normalises, so that it is identical on every process; with ``normalizer_momentum`` an
      exponential moving average of it, in the float64 buffer ``loss_normalizer`` so that checkpoints carry it;
    - logging (:meth:`log_efl_state`): the mean focusing factor, overall and per LVIS frequency group, and the
      positive anchors per image, every ``LOG_PERIOD`` iterations (the period of detectron2's writers) from the
      first on, which is when the only host syncs of this part happen.

    Its ground-truth classes must lie in [0, C): the training loader checks every annotation on the CPU
    (:class:`efl.data.train_loader.CheckAnnotatedClasses`), so that nothing reads them back from a GPU here.
    """

    LOG_PERIOD = 20

    # Not @configurable, which would demand a from_config of every detector: those built from a yacs config make
    # their own __init__ @configurable (EFLRetinaNet, ImprovedRetinaNet); a LazyConfig-only one (EFLFCOS) has none.
    def __init__(
        self,
        *,
        cls_loss: Optional[EqualizedFocalLoss] = None,
        frequency_groups: Optional[Sequence[int]] = None,
        normalizer_momentum: Optional[float] = None,
        normalizer_start: float = 100.0,
        **kwargs,
    ):
        """
        Args:
            cls_loss: the classification loss (EqualizedFocalLoss or a variant), which holds the statistics. None
                builds the paper's EFL (s = 8) with the detector's focal-loss gamma and alpha as gamma_b and alpha
                (RetinaNet's and FCOS's defaults, 2 and 0.25, are the paper's).
            frequency_groups: optional (C,) frequency group of each class (0 rare, 1 common, 2 frequent, see
                :data:`FREQUENCY_GROUPS`), the training set's (efl.data.lvis_frequency_groups); when given, the mean
                focusing factor and gradient ratio of each group are logged while training.
            normalizer_momentum: None normalises each step by its own positive count; a momentum (detectron2's
                RetinaNet and FCOS: 0.9) by an exponential moving average of it, starting at ``normalizer_start``.
            kwargs: arguments of the detector.
        """
        super().__init__(**kwargs)
        if cls_loss is None:
            cls_loss = EqualizedFocalLoss(self.num_classes, gamma_b=self.focal_loss_gamma, alpha=self.focal_loss_alpha)
        if cls_loss.num_classes != self.num_classes:
            raise ValueError(f"cls_loss has {cls_loss.num_classes} classes, the detector {self.num_classes}")
        self.cls_loss = cls_loss
        groups = None if frequency_groups is None else torch.as_tensor(frequency_groups)
        self.register_buffer("frequency_groups", groups, persistent=False)
        self.normalizer_momentum = normalizer_momentum
        self.normalizer_start = float(normalizer_start)
        if normalizer_momentum is not None:
            self.register_buffer("loss_normalizer", torch.tensor(self.normalizer_start, dtype=torch.float64))

    def efl_step(self, gt_labels: List[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """
        What every detector's ``losses`` starts with: the batch's labels, its positives and its normaliser (and, as a
        side effect, this step's name in the loss's reports and the periodic logging).

        Args:
            gt_labels: per-image (R,) labels in {-1 ignore, 0..C-1, C background}.

        Returns:
            (N, R) labels, (N, R) bool mask of the positive anchors, 0-dim normaliser (:meth:`step_normalizer`).
        """
        labels = torch.stack(gt_labels)
        pos_mask = (labels >= 0) & (labels != self.num_classes)
        num_pos = pos_mask.sum()
        normalizer = self.step_normalizer(num_pos)
        self.log_efl_state(num_pos, len(labels))
        return labels, pos_mask, normalizer

    def step_normalizer(self, num_pos: Tensor) -> Tensor:
        """
        Args:
            num_pos: 0-dim count of this process's positive anchors in the batch.

        Returns:
            0-dim float32 tensor (no host sync): max(mean over processes of num_pos, 1), or its moving average
            (kept in float64, so that it evolves exactly as detectron2's Python float does).
        """
        mean = mean_over_processes(num_pos.to(torch.float64)).clamp(min=1.0)
        if self.normalizer_momentum is not None:
            m = self.normalizer_momentum
            mean = self.loss_normalizer = self.loss_normalizer * m + mean * (1 - m)
        return mean.float()

    def log_efl_state(self, num_pos: Tensor, num_images: int) -> None:
        """
        Name this step in the loss's warnings and, every LOG_PERIOD iterations, log the positive anchors per image
        and the mean focusing factor gamma_j and gradient ratio g_j (overall and per frequency group: g_j shows the
        imbalance also when s = 0 keeps every gamma_j at gamma_b), and report non-finite steps.
        """
        storage = get_event_storage()
        self.cls_loss.step = storage.iter
        if storage.iter % self.LOG_PERIOD:
            return
        per_class = torch.stack((self.cls_loss.focusing_factors(), self.cls_loss.pos_neg.float()))  # (2, C)
        values = [num_pos.reshape(1).float() / num_images, per_class.mean(dim=1)]
        names = ["num_pos_anchors", "efl/gamma_mean", "efl/g_mean"]
        if self.frequency_groups is not None:
            sums = per_class.new_zeros(2, 3).index_add_(1, self.frequency_groups, per_class)
            sizes = torch.bincount(self.frequency_groups, minlength=3)
            values.append((sums / sizes).flatten())  # an empty group gives nan: not logged below
            names += [f"efl/{name}_{g}" for name in ("gamma", "g") for g in FREQUENCY_GROUPS]
        scalars = {n: v for n, v in zip(names, torch.cat(values).tolist()) if math.isfinite(v)}
        storage.put_scalars(**scalars, smoothing_hint=False)
        self.cls_loss.report_nonfinite_steps()

    def reset_statistics(self) -> None:
        """Start the EFL statistics (and the moving-average normaliser) afresh, e.g. to fine-tune on another dataset."""
        self.cls_loss.reset_statistics()
        if self.normalizer_momentum is not None:
            self.loss_normalizer = torch.full_like(self.loss_normalizer, self.normalizer_start)
