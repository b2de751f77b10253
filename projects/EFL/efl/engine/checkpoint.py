"""The project's checkpointer: detectron2's, with crash-safe writes and a clear word on missing EFL state."""
import logging
import os

from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["EFLCheckpointer"]

logger = logging.getLogger(__name__)

# State an EFL detector keeps beyond a focal-loss RetinaNet's: the statistics and the loss normaliser.
_EFL_STATE = ("pos_grad", "neg_grad", "pos_neg", "loss_normalizer")
_PARTIAL = ".partial"


class EFLCheckpointer(DetectionCheckpointer):
    """
    - A checkpoint is written under a temporary name and renamed into place, and ``last_checkpoint`` is replaced
      atomically after it: an interrupted write never leaves ``last_checkpoint`` naming a broken file.
    - Weights without EFL's state (a focal-loss checkpoint, for fine-tuning or evaluation) load, with one message
      saying that the statistics start from their initial values (g = 1: EFL starts as focal loss).
    """

    _tagging_allowed = True

    def save(self, name: str, **kwargs) -> None:
        # The parent writes <name>.partial.pth and would tag it; the tag waits until the file is in place.
        self._tagging_allowed = False
        try:
            super().save(name + _PARTIAL, **kwargs)
        finally:
            self._tagging_allowed = True
        if not self.save_dir or not self.save_to_disk:
            return
        basename = f"{name}.pth"
        os.replace(os.path.join(self.save_dir, f"{name}{_PARTIAL}.pth"), os.path.join(self.save_dir, basename))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self._tagging_allowed:
            return
        tag = os.path.join(self.save_dir, "last_checkpoint")
        with open(tag + _PARTIAL, "w") as f:
            f.write(last_filename_basename)
        os.replace(tag + _PARTIAL, tag)

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        missing = [k for k in incompatible.missing_keys if k.rsplit(".", 1)[-1] in _EFL_STATE]
        if missing:
            for key in missing:
                incompatible.missing_keys.remove(key)
            logger.warning(
                f"The weights have no EFL state ({', '.join(missing)}): probably a focal-loss model. The EFL "
                "statistics start from their initial values (g = 1, so EFL starts as focal loss) and the loss "
                "normaliser from 100."
            )
        return incompatible
