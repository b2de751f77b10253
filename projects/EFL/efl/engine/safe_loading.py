"""
Reading weight and checkpoint files without running code from them.

A ``.pth`` file is a pickle, and unpickling can call any function the file names. Every reader of this project
loads with ``torch.load(weights_only=True)``, which builds only tensors and plain containers, and a ``.pkl`` (the
format of detectron2's model zoo) is first read by an unpickler that builds only dicts and numpy arrays. A file
that needs more is refused with a message naming what it would run; ``trust_pickle=True`` (``--trust-pickle`` in
the tools and train_net.py) loads it anyway, for files whose origin you trust.
"""
import importlib
import io
import pickle
import re
from typing import Any, FrozenSet, List, Tuple

import torch

from ..errors import ConfigError

__all__ = ["UnreadableFileError", "UnsafeFileError", "check_pickle_file", "load_torch_file"]


class UnreadableFileError(ConfigError):
    """A file that is not a checkpoint of a known format, or a truncated or corrupt one."""


class UnsafeFileError(ConfigError):
    """A file that holds objects whose unpickling would run code from the file."""


def load_torch_file(path: str, trust_pickle: bool = False) -> Any:
    """
    ``torch.load(path)`` on the CPU, with ``weights_only=True`` unless ``trust_pickle``.

    Raises:
        UnsafeFileError: the file needs full unpickling (and ``trust_pickle`` is False).
        UnreadableFileError: the file cannot be read as a PyTorch file.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except FileNotFoundError:
        raise UnreadableFileError(f"{path} does not exist") from None
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for a bad file
        unsafe = [] if trust_pickle else _unsafe_globals(path, e)
        if unsafe:
            raise UnsafeFileError(_unsafe_message(path, unsafe)) from None
        raise UnreadableFileError(_unreadable_message(path, _first_sentence(e))) from None


# What detectron2's model-zoo .pkl files are made of: dicts (of str, int and float), lists, tuples and numpy
# arrays, which unpickle through numpy's array and dtype constructors (under numpy 1's and numpy 2's module names).
_PICKLE_ALLOWED: FrozenSet[Tuple[str, str]] = frozenset(
    {
        ("_codecs", "encode"),  # bytes, under pickle protocol 2
        ("collections", "OrderedDict"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # arrays, under pickle protocol 5
        ("numpy._core.numeric", "_frombuffer"),
    }
)


class _Refused(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise _Refused(f"{module}.{name}")
        return getattr(importlib.import_module(module), name)


def check_pickle_file(path: str) -> None:
    """
    Raise unless unpickling ``path`` (a plain pickle, such as detectron2's .pkl weights) builds nothing but dicts,
    lists and numpy arrays. A file that passes can then be unpickled normally: unpickling the same bytes calls the
    same constructors, which were just checked.

    Raises:
        UnsafeFileError: the file names another function or class.
        UnreadableFileError: the file is not a pickle, or is truncated.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UnreadableFileError(f"cannot read {path}: {e.strerror}") from None
    try:
        _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _Refused as e:
        raise UnsafeFileError(_unsafe_message(path, [str(e)])) from None
    except Exception as e:  # EOFError, ValueError, ... from a truncated or foreign file
        raise UnreadableFileError(_unreadable_message(path, "not a pickle file")) from None


def _unsafe_globals(path: str, error: Exception) -> List[str]:
    """The functions and classes the file names beyond weights_only's: all of them for a zip checkpoint, else the
    first one, from torch's message."""
    names = set(re.findall(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(error), re.IGNORECASE))
    try:
        names.update(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip checkpoint: cannot be inspected without unpickling it
        pass
    return sorted(names)


def _unsafe_message(path: str, names: List[str]) -> str:
    return (
        f"{path} holds objects that are not weights ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''}); "
        "loading it would run code from the file. Load it only if you trust where it came from, with --trust-pickle"
    )


def _first_sentence(error: Exception) -> str:
    # torch's messages go on with advice (weights_only=False) that does not apply here
    detail = str(error).strip().split(". ")[0].splitlines()[0].rstrip(".") if str(error).strip() else ""
    if not detail or isinstance(error, KeyError) or detail.startswith("Weights only load failed"):
        return "not a PyTorch checkpoint"
    return detail


def _unreadable_message(path: str, detail: str) -> str:
    return f"cannot read {path}: {detail} (a truncated download or copy, or not a checkpoint file)"
