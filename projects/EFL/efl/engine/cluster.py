"""
A training run as a submitit job (SLURM, or submitit's local executor): one task per node, each starting
train_net.py for its node with the machine rank and the distributed URL taken from the job's environment. When the
cluster announces a preemption or the time limit (submitit's signal, SIGUSR2), the run stops after a checkpoint of
its current iteration (efl.engine.signals) and the job is requeued (submitit's checkpointing protocol); every start
of the job passes ``--resume``, so a requeued job continues from the run's output directory.
"""
import logging
import os
import signal
import subprocess
import sys
import zlib
from pathlib import Path
from typing import List, Sequence

import cloudpickle
import submitit

from .signals import EXIT_PREEMPTED

__all__ = ["TRAIN_NET", "TrainingJob"]

logger = logging.getLogger(__name__)

# submitit pickles the job with cloudpickle: by value, the job's process unpickles it importing submitit alone, not
# efl (torch and detectron2: seconds at every start and requeue of every task); the train_net.py it starts imports them.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

TRAIN_NET = str(Path(__file__).resolve().parents[4] / "train_net.py")
# The arguments that the job sets itself, from its environment.
JOB_ARGUMENTS = ("--num-gpus", "--num-machines", "--machine-rank", "--dist-url", "--resume")


class TrainingJob(submitit.helpers.Checkpointable):
    """
    ``TrainingJob(arguments, processes_per_node)()`` runs ``train_net.py --resume --num-gpus processes_per_node
    --num-machines <nodes> --machine-rank <node> --dist-url tcp://<first node>:<port> <arguments>`` and returns its
    exit status (0); it raises when train_net.py fails, or stops without being asked to by submitit (a cluster that
    signals every process of a job when it preempts it requeues it itself).
    """

    def __init__(self, arguments: Sequence[str], processes_per_node: int):
        self.arguments = list(arguments)
        self.processes_per_node = processes_per_node
        self._process = None

    def command(self, environment: submitit.JobEnvironment) -> List[str]:
        """train_net.py's command line for this task, in ``environment``."""
        # every task of the job derives the same port from the job's id (requeued jobs keep their id)
        port = 20000 + zlib.crc32(environment.job_id.encode()) % 20000
        master = environment.hostnames[0] if environment.num_nodes > 1 else "127.0.0.1"
        return [
            sys.executable, TRAIN_NET, "--resume", "--num-gpus", str(self.processes_per_node),
            "--num-machines", str(environment.num_nodes), "--machine-rank", str(environment.node),
            "--dist-url", f"tcp://{master}:{port}", *self.arguments,
        ]  # fmt: skip

    def __call__(self) -> int:
        command = self.command(submitit.JobEnvironment())
        logger.info(f"Starting {' '.join(command)}")
        self._process = subprocess.Popen(command)
        status = _wait(self._process)
        if status != 0:
            reason = "stopped by a signal (its state is saved; it resumes)" if status == EXIT_PREEMPTED else "failed"
            raise RuntimeError(f"train_net.py {reason}: exit status {status}")
        return status

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """submitit calls this on its preemption / time-limit signal, in the job's first task: stop train_net.py
        (SIGTERM: it saves its current iteration), then requeue this job as it is (it resumes)."""
        if self._process is not None and self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGTERM)
            status = _wait(self._process)
            logger.info(f"train_net.py stopped for the requeue (exit status {status})")
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

    def __getstate__(self):
        return {**self.__dict__, "_process": None}  # what submitit pickles to requeue: no running process


def _wait(process: subprocess.Popen) -> int:
    # With a timeout, Popen.wait never blocks on its lock, so it may run in a signal handler (checkpoint) while the
    # job's main flow waits too.
    while True:
        try:
            return process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            continue
