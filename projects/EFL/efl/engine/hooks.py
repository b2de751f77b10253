"""Training hooks of the EFL project."""
import torch

from detectron2.engine import HookBase

from ..losses import EqualizedFocalLoss

__all__ = ["FULL_MODEL", "FullModelGradientClipping", "ReportNonFiniteStatistics", "RevertStatisticsOfSkippedSteps"]

# SOLVER.CLIP_GRADIENTS.CLIP_TYPE value that clips the norm of all gradients together. detectron2's own "norm"
# clips each parameter's gradient separately; the EFL recipe clips the whole model's, like
# torch.nn.utils.clip_grad_norm_(model.parameters(), 35).
FULL_MODEL = "full_model"


class FullModelGradientClipping(HookBase):
    """
    Clip the L2 (or other) norm of all the model's gradients together, between backward and the optimizer step.
    Register it on the SimpleTrainer/AMPTrainer that runs the steps (DefaultTrainer._trainer): only that one calls
    ``after_backward``.
    """

    def __init__(self, max_norm: float, norm_type: float = 2.0):
        self.max_norm = max_norm
        self.norm_type = norm_type

    def after_backward(self):
        trainer = self.trainer
        scaler = getattr(trainer, "grad_scaler", None)
        if scaler is not None and scaler.is_enabled():
            scaler.unscale_(trainer.optimizer)  # clip the true gradients; scaler.step() knows they are unscaled
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), self.max_norm, self.norm_type)


class RevertStatisticsOfSkippedSteps(HookBase):
    """
    With AMP, GradScaler skips the optimizer step when a gradient overflowed, after EFL already added that step's
    statistics in backward. This hook undoes them, so that skipped steps add nothing. Register it on the
    AMPTrainer (DefaultTrainer._trainer); the scaler's scale drops exactly when it skipped a step.
    """

    def before_step(self):
        # The scale as a device tensor, compared and acted on on the device: get_scale() would sync twice a step.
        scale = self.trainer.grad_scaler._get_scale_async()
        self._scale = self.trainer.grad_scaler.get_scale() if scale is None else scale.clone()  # None: first step

    def after_step(self):
        skipped = self.trainer.grad_scaler._get_scale_async() < self._scale
        for module in self.trainer.model.modules():
            if isinstance(module, EqualizedFocalLoss):
                module.revert_last_update(skipped)


class ReportNonFiniteStatistics(HookBase):
    """
    EFL reports steps with non-finite statistics every few iterations (so that checking them costs no host sync
    per step); this hook reports the last few when training ends, however it ends.
    """

    def after_train(self):
        for module in self.trainer.model.modules():
            if isinstance(module, EqualizedFocalLoss):
                module.report_nonfinite_steps()
