"""
One run per output directory: two runs writing the same checkpoints, ``last_checkpoint`` and metrics would
silently replace each other's work.
"""
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
from typing import Dict, Optional

from ..errors import ConfigError, SettingNames

__all__ = ["OutputDirInUseError", "OutputDirLock"]

logger = logging.getLogger(__name__)


class OutputDirInUseError(ConfigError):
    """Another live run holds the output directory."""


class OutputDirLock:
    """
    An exclusive lock on ``<directory>/run.lock``, holding the owner's pid, host, start time and command line.

    The lock is the kernel's (``flock``), so it is released when its owner exits however it exits, SIGKILL
    included; the file is removed on a normal release. A file left by a run that was killed is taken over, with a
    warning naming that run. Take it in one process per run, the one that outlives the others: train_net.py's
    parent process on machine 0, before it starts the workers.

        with OutputDirLock(output_dir, "OUTPUT_DIR"):
            launch(...)
    """

    FILENAME = "run.lock"

    def __init__(self, directory: str, key: str = SettingNames().output_dir):
        """
        Args:
            directory: the run's output directory.
            key: the setting that names it, for the message to a second run.
        """
        self.directory = directory
        self.key = key
        self.path = os.path.join(directory, self.FILENAME)
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        """
        Raises:
            OutputDirInUseError: another live process holds the lock.
        """
        os.makedirs(self.directory, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                owner = _read_owner(fd)
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputDirInUseError(
                        f"{self.key} {self.directory} is in use by another run ({_describe(owner)}): wait for it to "
                        f"end, or set {self.key} to another directory"
                    ) from None
                logger.warning(f"Cannot lock {self.path} ({e.strerror}): make sure no other run uses this {self.key}")
                return
            # The previous owner removes the file when it releases it: if it did so after our open, we hold a lock
            # on a file that no longer has this name, and must start over on the new one.
            try:
                current = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        previous = _read_owner(fd)
        if previous is not None:
            logger.warning(
                f"Taking over {self.path} from a run that ended without releasing it (killed or crashed): "
                f"{_describe(previous)}"
            )
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        # Removed while still locked: a run waiting on this file then sees it gone and starts on a fresh one.
        os.unlink(self.path)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "OutputDirLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_owner(fd: int) -> Optional[Dict]:
    """The owner a lock file records, {} when unreadable, None when empty (a fresh file)."""
    data = os.pread(fd, 1 << 16, 0)
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return {}


def _describe(owner: Optional[Dict]) -> str:
    if not owner:
        return "owner unknown"
    return f"pid {owner.get('pid')} on host {owner.get('host')}, started {owner.get('started')}: {owner.get('command')}"
