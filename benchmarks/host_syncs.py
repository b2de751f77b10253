"""
Count what makes a training step wait for the GPU (host syncs), and which line of which package asks for it.

- On CUDA: ``torch.cuda.set_sync_debug_mode("warn")`` makes PyTorch warn at every synchronizing call; each warning
  is one sync, attributed to the first Python frame outside torch, or in backward to the autograd node.
- On the CPU nothing waits, so this counts what would wait on CUDA: host reads of tensor values. Seen as ATen ops
  (a TorchDispatchMode): item() and int/float/bool of a tensor (so ``if tensor`` and ``assert tensor``), nonzero
  (and torch.where(cond)), boolean-mask indexing (``x[mask]``, ``x[mask] = tensor``; ``x[mask] = number`` is a
  masked_fill and does not sync), masked_select, unique, bincount, repeat_interleave without output_size; and as
  Python calls (a TorchFunctionMode): tolist(), numpy() and cpu(), which reach no ATen op on the CPU. Not seen on
  the CPU: copies from pageable host memory to the GPU, which sync too.

    with HostSyncs(device) as syncs:
        step()
    syncs.by_site()  # Counter of (file, function) -> count
"""
import collections
import contextlib
import os
import sys
import warnings
from typing import Counter, List, NamedTuple, Optional

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["BACKWARD", "HostSyncs", "Site", "origin"]

aten = torch.ops.aten
_READS = {
    aten._local_scalar_dense.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
    aten.bincount.default,
}
_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
_PYTHON_READS = {torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu}
# Frames that are not where a read is asked for: torch itself, this file, the warnings machinery.
_SKIPPED = (os.path.dirname(torch.__file__) + os.sep, os.path.abspath(__file__), "<frozen") + tuple(
    os.path.splitext(m.__file__)[0] for m in (warnings, contextlib)
)
_SYNC_WARNING = "called a synchronizing CUDA operation"
BACKWARD = "(backward)"


class Site(NamedTuple):
    """Where a host read or sync came from: a file (from its package root) and function."""

    path: str
    function: str
    line: int
    what: str


def _relative(path: str) -> str:
    """detectron2/..., fvcore/..., efl/..., or the path from the current directory."""
    for marker in ("site-packages" + os.sep, "dist-packages" + os.sep, os.path.join("projects", "EFL") + os.sep):
        if marker in path:
            return path.split(marker, 1)[1]
    return os.path.relpath(path)


def origin(site: Site) -> str:
    """The package a site belongs to: efl, detectron2, fvcore, ... (the top directory of its path), or (backward)."""
    return site.path.split(os.sep, 1)[0]


def _caller(what: str) -> Site:
    node = torch._C._current_autograd_node()
    if node is not None:  # in backward: the autograd node, whose forward op made it
        return Site(BACKWARD, node.name(), 0, what)
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(_SKIPPED):
        frame = frame.f_back
    if frame is None:
        return Site("?", "?", 0, what)
    return Site(_relative(frame.f_code.co_filename), frame.f_code.co_name, frame.f_lineno, what)


def _boolean_indexing(func, args) -> bool:
    if func not in _INDEXING:
        return False
    indices = args[1]
    masks = [i for i in indices if i is not None and i.dtype in (torch.bool, torch.uint8)]
    if not masks:
        return False
    if func is aten.index.Tensor:
        return True
    value, accumulate = args[2], (args[3] if len(args) > 3 else False)
    # x[mask] = number: one mask and a one-element value become masked_fill_, which does not sync
    defined = [i for i in indices if i is not None]
    return not (len(defined) == 1 and value.numel() == 1 and not accumulate)


class _AtenReads(TorchDispatchMode):
    def __init__(self, sites: List[Site]):
        super().__init__()
        self.sites = sites

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _READS or _boolean_indexing(func, args):
            self.sites.append(_caller(str(func.overloadpacket.__name__)))
        elif func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            self.sites.append(_caller("repeat_interleave"))
        return func(*args, **kwargs)


class _PythonReads(TorchFunctionMode):
    def __init__(self, sites: List[Site]):
        super().__init__()
        self.sites = sites

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _PYTHON_READS:
            self.sites.append(_caller(func.__name__))
        return func(*args, **(kwargs or {}))


class HostSyncs:
    """
    Context manager: on CUDA it records every synchronizing call; on the CPU every host read of a tensor's values.
    ``sites`` lists them in order.
    """

    def __init__(self, device: str):
        self.device = torch.device(device).type
        self.sites: List[Site] = []
        self._modes: list = []
        self._warnings: Optional[warnings.catch_warnings] = None

    @property
    def kind(self) -> str:
        return "CUDA syncs" if self.device == "cuda" else "host reads (CPU proxy)"

    def __enter__(self) -> "HostSyncs":
        if self.device == "cuda":
            self._warnings = warnings.catch_warnings()
            self._warnings.__enter__()
            warnings.simplefilter("always")
            shown = warnings.showwarning

            def record(message, category, filename, lineno, file=None, line=None):
                if _SYNC_WARNING in str(message):
                    self.sites.append(_caller("sync"))
                else:
                    shown(message, category, filename, lineno, file, line)

            warnings.showwarning = record
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
        else:
            self._modes = [_PythonReads(self.sites), _AtenReads(self.sites)]
            for mode in self._modes:
                mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            torch.cuda.set_sync_debug_mode("default")
            self._warnings.__exit__(*exc)
        else:
            for mode in reversed(self._modes):
                mode.__exit__(*exc)

    def by_site(self) -> Counter:
        """(path, function) -> count."""
        return collections.Counter((s.path, s.function) for s in self.sites)

    def by_origin(self) -> Counter:
        """package (efl, detectron2, fvcore, torch...) -> count."""
        return collections.Counter(origin(s) for s in self.sites)
