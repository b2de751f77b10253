"""
detectron2's launch, with a user's mistake found inside a worker process reported as a message, and the way
train_net.py starts a run (:func:`launch_run`).
"""
import contextlib

import torch.multiprocessing as mp

from detectron2.engine import launch as _d2_launch

from ..errors import ConfigError, config_error_message
from .lock import OutputDirLock
from .training import Recipe, run

__all__ = ["launch", "launch_run"]


def launch(main_func, num_gpus_per_machine: int, num_machines: int = 1, machine_rank: int = 0, dist_url=None, args=()):
    """
    ``detectron2.engine.launch`` with the same arguments. A :class:`ConfigError` raised by ``main_func`` reaches the
    caller as a ConfigError with the original message, also when it was raised in a worker process (which
    detectron2's launch reports as the worker's whole traceback) or in a DataLoader worker.
    """
    try:
        _d2_launch(
            main_func, num_gpus_per_machine, num_machines=num_machines, machine_rank=machine_rank, dist_url=dist_url,
            args=args,
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
    writes the outputs) from before the workers start until they end: one run per output directory.

    Raises:
        ConfigError: the output directory is in use, or a worker stopped on a mistake of the user's.
    """
    settings = recipe.settings
    lock = OutputDirLock(settings.output_dir, settings.names.output_dir) if args.machine_rank == 0 else contextlib.nullcontext()
    with lock:
        print("Command Line Args:", args)
        launch(
            run,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args, recipe),
        )
