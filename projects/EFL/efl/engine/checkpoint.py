"""
The project's checkpointer: detectron2's, with crash-safe writes, safe reads, weights that must fit the model,
and resuming from the newest checkpoint that can be read.
"""
import errno
import io
import logging
import os
import shutil
import socket
from collections import defaultdict
from typing import Dict, List, Sequence, Tuple

from detectron2.checkpoint import DetectionCheckpointer

from ..errors import ConfigError, SettingNames
from .safe_loading import UnreadableFileError, check_pickle_file, load_torch_file

__all__ = ["DiskFullError", "EFLCheckpointer", "WeightsMismatchError", "reset_efl_statistics"]

logger = logging.getLogger(__name__)

# State an EFL detector keeps beyond a focal-loss RetinaNet's: the statistics and the loss normaliser. It is
# training state (predictions do not depend on it), so weights without it fit, and it starts afresh.
_STATISTICS = ("pos_grad", "neg_grad", "pos_neg")
_NORMALIZER = "loss_normalizer"
_EFL_STATE = _STATISTICS + (_NORMALIZER,)
# Marks the temporary files of a write in progress; never read as checkpoints.
_PARTIAL = ".partial-"
# How many groups of keys a mismatch message lists.
_LISTED = 12


class WeightsMismatchError(ConfigError):
    """Weights that do not fill the model exactly: keys missing or left over, or tensors of other shapes."""


class DiskFullError(ConfigError):
    """A checkpoint that did not fit on the disk; the partial file is removed."""


class _ByteCounter(io.RawIOBase):
    """A file that only counts the bytes written to it."""

    def __init__(self):
        super().__init__()
        self.written = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.written += len(data)
        return len(data)


class _CountingPathManager:
    """What the checkpointer opens to write: a :class:`_ByteCounter` (the size a checkpoint takes, without a disk)."""

    def __init__(self):
        self.file = _ByteCounter()

    def open(self, path: str, mode: str) -> _ByteCounter:
        return self.file


def _disk_full(error: BaseException) -> bool:
    """Whether ``error``, or an error it was raised while handling, is "no space left on device"."""
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        error = error.__cause__ or error.__context__
    return False


def _size(num_bytes: float) -> str:
    if num_bytes < 1024:
        return f"{num_bytes:.0f} bytes"
    for unit in ("KB", "MB", "GB"):
        num_bytes /= 1024
        if num_bytes < 1024 or unit == "GB":
            return f"{num_bytes:.1f} {unit}"


def _is_efl_state(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in _EFL_STATE


class EFLCheckpointer(DetectionCheckpointer):
    """
    - **Writing.** A checkpoint is written under a temporary name unique to the process (host and pid) and renamed
      into place, and ``last_checkpoint`` is replaced atomically after it: an interrupted write never leaves
      ``last_checkpoint`` naming a broken file, and two processes never write the same temporary file. A write that
      the disk cannot hold removes its partial file and stops with one message (:class:`DiskFullError`).
    - **Reading.** ``.pth`` files are read with ``weights_only=True`` and ``.pkl`` files only when they hold nothing
      but dicts and numpy arrays (:mod:`efl.safe_loading`), unless ``trust_pickle``. A file that cannot be read
      stops with a message that names it.
    - **Fit.** Weights must fill the model exactly: no key missing or left over, no other shape. Otherwise loading
      stops with one message listing what does not fit, unless ``allow_partial`` (fine-tuning from a detector
      trained on other classes), or the weights are an ImageNet backbone (detectron2's ``matching_heuristics``
      files), which load partially as in detectron2. EFL's state is exempt: weights without it (a focal-loss
      model) load, with one message saying what starts afresh.

    Messages name the settings as ``names`` writes them (a config front-end's names; by default the arguments of
    this class).
    - **Resuming** starts from ``last_checkpoint``'s file, or, when that is missing or unreadable, from the newest
      readable checkpoint in the directory, with a warning naming the one passed over.
    """

    def __init__(
        self,
        model,
        save_dir: str = "",
        *,
        allow_partial: bool = False,
        trust_pickle: bool = False,
        names: SettingNames = SettingNames(),
        **kwargs,
    ):
        super().__init__(model, save_dir, **kwargs)
        self.allow_partial = allow_partial
        self.trust_pickle = trust_pickle
        self.names = names
        self._tagging_allowed = True
        self._path = None

    # ----- writing

    @staticmethod
    def _temporary_suffix() -> str:
        return f"{_PARTIAL}{socket.gethostname()}-{os.getpid()}"

    def save(self, name: str, **kwargs) -> None:
        # The parent writes <name><suffix>.pth and would tag it; the tag waits until the file is in place.
        temporary = name + self._temporary_suffix()
        self._tagging_allowed = False
        try:
            super().save(temporary, **kwargs)
        except (OSError, RuntimeError) as e:  # torch.save reports ENOSPC as a RuntimeError from its zip writer
            partial = os.path.join(self.save_dir, f"{temporary}.pth")
            if os.path.exists(partial):
                os.remove(partial)
            if not _disk_full(e):
                raise
            raise DiskFullError(self._disk_full_message(name, temporary, kwargs)) from None
        finally:
            self._tagging_allowed = True
        if not self.save_dir or not self.save_to_disk:
            return
        basename = f"{name}.pth"
        os.replace(os.path.join(self.save_dir, f"{temporary}.pth"), os.path.join(self.save_dir, basename))
        self.tag_last_checkpoint(basename)

    def _disk_full_message(self, name: str, temporary: str, kwargs) -> str:
        """Names the file, the bytes it needs (the same checkpoint serialised again, into a counter) and the space
        left."""
        counter = _CountingPathManager()
        disk, self.path_manager = self.path_manager, counter
        try:
            super().save(temporary, **kwargs)
        finally:
            self.path_manager = disk
        free = shutil.disk_usage(self.save_dir).free
        return (
            f"no space left to write {os.path.join(self.save_dir, name)}.pth: it needs {_size(counter.file.written)}, the disk "
            f"of {self.save_dir} has {_size(free)} free; the previous checkpoint and last_checkpoint are untouched: "
            "free some space, then continue with --resume"
        )

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self._tagging_allowed:
            return
        tag = os.path.join(self.save_dir, "last_checkpoint")
        temporary = tag + self._temporary_suffix()
        with open(temporary, "w") as f:
            f.write(last_filename_basename)
        os.replace(temporary, tag)

    def get_all_checkpoint_files(self) -> List[str]:
        return [f for f in super().get_all_checkpoint_files() if _PARTIAL not in os.path.basename(f)]

    # ----- reading

    def load(self, path: str, *args, **kwargs):
        self._path = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._path = None
            # detectron2 resets it only when loading succeeds; a failed load would make the next one assert
            self._parsed_url_during_load = None

    def _load_file(self, filename: str):
        if filename.endswith(".pkl") and not self.trust_pickle:
            check_pickle_file(filename)  # then detectron2 unpickles it
        loaded = super()._load_file(filename)
        trainer = loaded.get("trainer")
        if isinstance(trainer, dict) and "_trainer" in trainer:
            # Written by detectron2's DefaultTrainer (this project's yacs runs before version 0.2), which nests the
            # step-running trainer's state: resumed by the SimpleTrainer that runs every config now.
            loaded["trainer"] = {**trainer.pop("_trainer"), **trainer}
        return loaded

    def _torch_load(self, f: str):
        return load_torch_file(f, trust_pickle=self.trust_pickle)

    # ----- fit

    def _load_model(self, checkpoint):
        backbone_only = checkpoint.get("matching_heuristics", False)
        incompatible = super()._load_model(checkpoint)
        # A tensor of another shape is left out of the load, so it is reported missing too: list it once.
        reshaped = {k for k, _, _ in incompatible.incorrect_shapes}
        efl_missing = [k for k in incompatible.missing_keys if _is_efl_state(k)]
        for key in efl_missing + [k for k in incompatible.missing_keys if k in reshaped and not _is_efl_state(k)]:
            incompatible.missing_keys.remove(key)
        for key in [k for k in incompatible.unexpected_keys if _is_efl_state(k)]:
            incompatible.unexpected_keys.remove(key)  # EFL state of an EFL model, loaded into a focal-loss one
        for entry in [e for e in incompatible.incorrect_shapes if _is_efl_state(e[0])]:
            incompatible.incorrect_shapes.remove(entry)  # another class count, reported by the classifier's shape
        misfit = bool(incompatible.missing_keys or incompatible.unexpected_keys or incompatible.incorrect_shapes)
        names = self.names
        if misfit and not (self.allow_partial or backbone_only):
            raise WeightsMismatchError(
                f"the weights {self._path} do not fit the model ({_describe(incompatible)}): check that the config "
                f"({names.architecture}, {names.num_classes}, ...) is the one they were trained with, or set "
                f"{names.setting(names.allow_partial_weights, True)} to load what fits (fine-tuning)"
            )
        if misfit and not backbone_only:
            logger.warning(
                f"{names.allow_partial_weights}: {self._path} was loaded partially ({_describe(incompatible)}); "
                "the parameters it lacks keep their initial values"
            )
        if efl_missing:
            origin = "" if misfit else ": a model trained without EFL (focal loss)"
            logger.warning(
                f"The weights have no EFL state ({', '.join(efl_missing)}){origin}. "
                f"{_what_starts_afresh(self.model, efl_missing)}."
            )
        return incompatible

    # ----- resuming

    def resume_or_load(self, path: str, *, resume: bool = True):
        if not (resume and self.has_checkpoint()):
            return super().resume_or_load(path, resume=resume)
        tagged = self.get_checkpoint_file()
        if tagged and not os.path.isfile(tagged):
            logger.warning(f"{os.path.join(self.save_dir, 'last_checkpoint')} names {tagged}, which does not exist")
        candidates = [tagged] if os.path.isfile(tagged) else []
        others = sorted(set(self.get_all_checkpoint_files()) - set(candidates), key=os.path.getmtime, reverse=True)
        for candidate in candidates + others:
            try:
                return self.load(candidate)
            except UnreadableFileError as e:
                logger.warning(f"Cannot resume from {candidate}, trying the next newest checkpoint: {e}")
        raise ConfigError(
            f"--resume: {self.save_dir} has no readable checkpoint: remove its last_checkpoint file to start from "
            f"{self.names.weights} instead"
        )


def reset_efl_statistics(model, setting: str) -> None:
    """
    Start the EFL statistics of ``model`` (an EFL detector, possibly wrapped in DistributedDataParallel) afresh after
    its weights were loaded, for fine-tuning weights trained on another dataset; ``setting`` is the switch that
    asked for it, named in the log.
    """
    getattr(model, "module", model).reset_statistics()
    logger.info(f"{setting}: the EFL statistics start afresh (g = 1) after loading the weights")


def _what_starts_afresh(model, efl_missing: Sequence[str]) -> str:
    """The EFL state that keeps its initial values, said for this model (its normaliser, if it has one)."""
    parts = []
    if any(key.rsplit(".", 1)[-1] in _STATISTICS for key in efl_missing):
        parts.append("the EFL statistics start afresh (g = 1, so EFL starts as focal loss)")
    for key in efl_missing:
        prefix, _, leaf = key.rpartition(".")
        if leaf == _NORMALIZER:
            start = model.get_submodule(prefix).normalizer_start
            parts.append(f"the loss normaliser, a moving average of the positive count, starts again from {start:g}")
    text = "; ".join(parts)
    return text[:1].upper() + text[1:]


def _describe(incompatible) -> str:
    parts = []
    if incompatible.missing_keys:
        parts.append(f"missing in the weights: {_grouped(incompatible.missing_keys)}")
    if incompatible.unexpected_keys:
        parts.append(f"not in the model: {_grouped(incompatible.unexpected_keys)}")
    if incompatible.incorrect_shapes:
        shapes = [f"{k} {tuple(a)} in the weights, {tuple(b)} in the model" for k, a, b in incompatible.incorrect_shapes]
        parts.append(f"other shapes: {'; '.join(shapes[:_LISTED])}{'; ...' if len(shapes) > _LISTED else ''}")
    return "; ".join(parts)


def _grouped(keys: Sequence[str]) -> str:
    """``a.b.{weight, bias}, c.d`` for keys a.b.weight, a.b.bias, c.d: compact and complete up to _LISTED groups."""
    groups: Dict[str, List[str]] = defaultdict(list)
    for key in keys:
        prefix, _, leaf = key.rpartition(".")
        groups[prefix].append(leaf)
    items: List[Tuple[str, List[str]]] = list(groups.items())
    shown = [
        (f"{prefix}." if prefix else "") + (leaves[0] if len(leaves) == 1 else f"{{{', '.join(leaves)}}}")
        for prefix, leaves in items[:_LISTED]
    ]
    more = len(items) - _LISTED
    return f"{len(keys)} keys: {', '.join(shown)}" + (f" and {more} more groups" if more > 0 else "")
