"""The one exception type of the EFL project for mistakes a user makes (settings, files, data)."""

__all__ = ["ConfigError", "config_error_message"]


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
