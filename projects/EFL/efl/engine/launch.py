"""
detectron2's launch, with a user's mistake found inside a worker process reported as a message, and the way
train_net.py starts a run (:func:`launch_run`).
"""
import contextlib
import os
import re
from typing import Optional

import torch.multiprocessing as mp

from detectron2.engine import launch as _d2_launch
from detectron2.engine.launch import _distributed_worker, _find_free_port

from ..errors import ConfigError, config_error_message
from .lock import OutputDirLock
from .signals import EXIT_PREEMPTED, Preempted, stop_requested, stopping_on_signals
from .training import Recipe, run

__all__ = ["launch", "launch_run"]


def launch(
    main_func,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url=None,
    args=(),
    fork: bool = False,
):
    """
    ``detectron2.engine.launch`` with the same arguments. A :class:`ConfigError` raised by ``main_func`` reaches the
    caller as a ConfigError with the original message, also when it was raised in a worker process (which
    detectron2's launch reports as the worker's whole traceback) or in a DataLoader worker.

    ``fork``: start the worker processes by forking this one rather than as fresh interpreters (detectron2's
    spawn), for runs on the CPU: each fresh interpreter imports torch and detectron2 again, seconds per process.
    CUDA cannot be used in a forked process, so GPU runs spawn.

    ``dist_url`` "auto" (train_net.py's default) is a free port of this machine, for a run on one machine.
    """
    if dist_url == "auto" and num_gpus_per_machine * num_machines > 1:
        if num_machines > 1:
            raise ConfigError(
                "--num-machines > 1 needs --dist-url tcp://<machine 0's address>:<port>, the same on every machine"
            )
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    try:
        if fork and num_gpus_per_machine * num_machines > 1:
            mp.start_processes(
                _distributed_worker,
                nprocs=num_gpus_per_machine,
                args=(main_func, num_gpus_per_machine * num_machines, num_gpus_per_machine, machine_rank, dist_url, args),
                daemon=False,
                start_method="fork",
            )
        else:
            _d2_launch(
                main_func, num_gpus_per_machine, num_machines=num_machines, machine_rank=machine_rank,
                dist_url=dist_url, args=args,
            )  # fmt: skip
    except mp.ProcessRaisedException as e:
        message = config_error_message(str(e))
        if message:
            raise ConfigError(message) from None
        raise
    except ConfigError as e:
        message = config_error_message(str(e))  # non-empty when wrapped by a DataLoader worker
        if message:
            raise ConfigError(message) from None
        raise


def launch_run(args, recipe: Recipe) -> None:
    """
    Run ``recipe`` in ``args.num_gpus`` processes on this machine (train_net.py's command line ``args``), the
    recipe built and checked already. This process holds the lock of its output directory (on machine 0, which
    writes the outputs) from before the workers start until they end: one run per output directory. It passes the
    stop signals it receives on to the workers (efl.engine.signals).

    Raises:
        ConfigError: the output directory is in use, or a worker stopped on a mistake of the user's.
        Preempted: a stop signal ended the run (the workers saved a checkpoint of their last iteration).
    """
    settings = recipe.settings
    lock = OutputDirLock(settings.output_dir, settings.names.output_dir) if args.machine_rank == 0 else contextlib.nullcontext()
    with lock, stopping_on_signals(forward=True):
        print("Command Line Args:", args)
        try:
            launch(
                run,
                args.num_gpus,
                num_machines=args.num_machines,
                machine_rank=args.machine_rank,
                dist_url=args.dist_url,
                args=(args, recipe),
                fork=not settings.device.startswith("cuda"),
            )
        except mp.ProcessExitedException as e:
            if e.exit_code != EXIT_PREEMPTED and stop_requested() is None:
                raise
            if args.eval_only:
                raise Preempted(stop_requested(), evaluating=True) from None
            raise _stopped(settings.output_dir, stop_requested(), e.exit_code == EXIT_PREEMPTED) from None


def _stopped(output_dir: str, signum: Optional[int], saved: bool) -> Preempted:
    """What the workers' stop left in ``output_dir``: the checkpoint last_checkpoint names, if they saved one."""
    tag = os.path.join(output_dir, "last_checkpoint")
    if not saved or not os.path.isfile(tag):
        return Preempted(signum)
    with open(tag) as f:
        name = f.read().strip()
    iteration = re.fullmatch(r".*_(\d+)\.pth", name)
    return Preempted(signum, int(iteration.group(1)) if iteration else None, os.path.join(output_dir, name))
