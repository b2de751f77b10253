"""
Stopping a run the way clusters stop jobs: SIGTERM (SLURM and Kubernetes preemption, with a grace period),
SIGUSR1 (SLURM's ``--signal`` before the time limit) and SIGINT (Ctrl-C). Every process finishes the iteration it
is in, the processes agree on the stop (the signal may reach some of them first, or only the launching process,
which forwards it to its workers), the main process writes a checkpoint of that iteration, and the run exits with
:data:`EXIT_PREEMPTED`, which a requeue script keys on. An evaluation that a signal interrupts stops without writing
its results. A second signal changes nothing: the stop is already decided, and checkpoints are written atomically
(EFLCheckpointer).
"""
import contextlib
import functools
import logging
import multiprocessing
import os
import signal
from typing import Iterator, Optional

import torch
import torch.distributed as dist

from detectron2.engine import HookBase
from detectron2.evaluation import DatasetEvaluator

__all__ = [
    "EXIT_PREEMPTED",
    "STOP_SIGNALS",
    "Preempted",
    "StopOnSignal",
    "StoppableEvaluation",
    "agreed_stop",
    "stop_requested",
    "stopping_on_signals",
]

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
# The exit status of a run stopped by a signal after saving its state: sysexits.h's EX_TEMPFAIL, "a temporary
# failure; the user is invited to retry" (with --resume). Documented in docs/guarantees.md.
EXIT_PREEMPTED = 75

_received: Optional[int] = None


class Preempted(Exception):
    """
    A run stopped by a signal (``signum``, None when the process that reports it did not receive it itself) after
    ``iteration``, with the checkpoint it saved (None when it had none to save); or, ``evaluating``, an evaluation
    stopped before it wrote anything.
    """

    def __init__(
        self,
        signum: Optional[int],
        iteration: Optional[int] = None,
        checkpoint: Optional[str] = None,
        evaluating: bool = False,
    ):
        self.signum = signum
        self.iteration = iteration
        self.checkpoint = checkpoint
        self.evaluating = evaluating
        super().__init__(self.message())

    def message(self) -> str:
        by = f"by {signal.Signals(self.signum).name}" if self.signum else "by a signal"
        if self.evaluating:
            return f"stopped {by} while evaluating: nothing written; evaluate again"
        if self.checkpoint is None:
            return f"stopped {by} before it saved a checkpoint of its own; continue with --resume (from the newest one)"
        return f"stopped {by} after iteration {self.iteration}: saved {self.checkpoint}; continue with --resume"


def _record(signum: int, frame) -> None:
    global _received
    if _received is None:
        _received = signum
        logger.warning(f"{signal.Signals(signum).name}: stopping after the current iteration, with a checkpoint")


def _forward(signum: int, frame) -> None:
    _record(signum, frame)
    for child in multiprocessing.active_children():
        try:
            os.kill(child.pid, signum)
        except ProcessLookupError:
            pass


def stop_requested() -> Optional[int]:
    """The stop signal this process received while :func:`stopping_on_signals` was in force; None if none."""
    return _received


@contextlib.contextmanager
def stopping_on_signals(forward: bool = False) -> Iterator[None]:
    """
    While the block runs, STOP_SIGNALS request a stop (checked by :class:`StopOnSignal` and
    :class:`StoppableEvaluation`, and by :func:`stop_requested`) instead of ending the process; with ``forward``
    (the launching process) they are also passed on to its worker processes (torch.multiprocessing children). The
    DataLoader workers a process forks inherit the handler, and so survive a signal sent to the whole process group.
    The previous handlers come back afterwards.
    """
    global _received
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum in STOP_SIGNALS:
        signal.signal(signum, _forward if forward else _record)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _received = None


@functools.lru_cache()
def _gloo_group():
    return dist.new_group(backend="gloo")  # every process creates it, at the same first agreement


def agreed_stop() -> Optional[int]:
    """
    The stop signal that any process received (None if none): one all-reduce (MAX) of a CPU integer over a gloo
    group, so that no GPU waits on it; no collective at all in a single process. Every process must call it at the
    same point.
    """
    local = _received or 0
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return local or None
    flag = torch.tensor([local])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=_gloo_group())
    return int(flag) or None


class StopOnSignal(HookBase):
    """After every iteration, stop the training (raise :class:`Preempted`) when any process received a stop signal.
    The checkpoint of that iteration is written by efl.engine.train, which catches it."""

    def after_step(self):
        signum = agreed_stop()
        if signum is not None:
            raise Preempted(signum)


class _UntilSignalled:
    """A data loader that stops yielding once a stop signal arrived (its length is the loader's, for progress)."""

    def __init__(self, data_loader):
        self.data_loader = data_loader

    def __len__(self) -> int:
        return len(self.data_loader)

    def __iter__(self) -> Iterator:
        for inputs in self.data_loader:
            if _received is not None:
                return
            yield inputs


class StoppableEvaluation(DatasetEvaluator):
    """
    An evaluator (wrapping another) whose data loader (:meth:`loader`) stops when a stop signal arrives, and whose
    :meth:`evaluate` then raises :class:`Preempted` on every process (they agree on it first: each reaches it, with or
    without having seen the signal) instead of computing and writing results.
    """

    def __init__(self, evaluator: DatasetEvaluator):
        self.evaluator = evaluator

    @staticmethod
    def loader(data_loader) -> _UntilSignalled:
        return _UntilSignalled(data_loader)

    def reset(self):
        self.evaluator.reset()

    def process(self, inputs, outputs):
        self.evaluator.process(inputs, outputs)

    def evaluate(self):
        signum = agreed_stop()
        if signum is not None:
            raise Preempted(signum, evaluating=True)
        return self.evaluator.evaluate()
