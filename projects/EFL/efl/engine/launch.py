"""detectron2's launch, with a user's mistake found inside a worker process reported as a message."""
import torch.multiprocessing as mp

from detectron2.engine import launch as _d2_launch

from ..errors import ConfigError, config_error_message

__all__ = ["launch"]


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
