"""
The one exception type of the EFL project for mistakes a user makes (settings, files, data), and how its messages
name a setting: each config system writes its own names (``MODEL.WEIGHTS`` / ``train.init_checkpoint``), and the
layers below the config front-ends word their messages with the names they are given.
"""
from typing import NamedTuple

__all__ = ["ConfigError", "SettingNames", "config_error_message"]


class ConfigError(ValueError):
    """A config, file or dataset that cannot be used as given; the message says what to change."""


_MARKER = f"{ConfigError.__name__}: "


def config_error_message(text: str) -> str:
    """
    The message of a ConfigError as it reaches the launcher wrapped by other layers: a worker process's traceback
    (torch.multiprocessing) or a DataLoader worker's ("Caught ConfigError in DataLoader worker process 0. Original
    Traceback ..."). Returns the last ConfigError's message, or "" when ``text`` holds none.
    """
    at = text.rfind(_MARKER)
    return text[at + len(_MARKER) :].strip() if at >= 0 else ""


class SettingNames(NamedTuple):
    """
    What a config system calls the settings that messages mention, and how it writes an override. The defaults
    are the words of the Python API (the arguments of the classes that take these settings), for code that uses
    those classes without a config.
    """

    output_dir: str = "output_dir"
    weights: str = "weights"
    allow_partial_weights: str = "allow_partial"
    architecture: str = "the model's class"
    num_classes: str = "num_classes"
    device: str = "device"
    batch_size: str = "batch_size"
    max_iter: str = "max_iter"
    max_epochs: str = "max_epochs"
    epoch_steps: str = "epoch_steps"
    warmup_epochs: str = "warmup_epochs"
    filter_empty: str = "filter_empty"
    register: str = "register"
    reset_statistics: str = "reset_statistics"
    override_format: str = "{key}={value}"  # "{key} {value}" for yacs

    def setting(self, key: str, value) -> str:
        """``key`` set to ``value`` as one writes it on the command line."""
        return self.override_format.format(key=key, value=value)
