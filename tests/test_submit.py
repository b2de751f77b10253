"""
tools/submit.py through submitit: on its local executor a real job, preempted as SLURM preempts one, is requeued
and resumes to the uninterrupted end; on SLURM each node starts train_net.py with its rank and the first node's
address; mistakes stop before anything is submitted; --wait reports a failing job's own line and status.
"""
import json
import os
import signal
import time
from pathlib import Path

import pytest

from conftest import DEMO_CONFIG, SMALL_OPTS
from interruptions import (
    ENV,
    assert_same_end,
    yacs_command,
)


def test_submitit_preempts_and_requeues_a_real_job_which_resumes_to_the_uninterrupted_end(
    uninterrupted, tmp_path, monkeypatch
):
    """tools/submit.py on submitit's local executor. SIGUSR2 to the job's task, as SLURM signals a job it preempts
    or that reaches its time limit: the task stops train_net.py (which saves its iteration) and requeues the job, which
    resumes from OUTPUT_DIR."""
    import submit

    reference, _ = uninterrupted("yacs", 1)
    monkeypatch.setenv("OMP_NUM_THREADS", ENV["OMP_NUM_THREADS"])  # the job's, as the reference's: same arithmetic
    out = tmp_path / "run"
    arguments = yacs_command(out, 1)
    arguments = arguments[arguments.index("--config-file") :]
    job = submit.main(["--cluster", "local", "--gpus-per-node", "1", "--timeout", "10", *arguments])
    deadline = time.monotonic() + 300
    while not (out / "model_0000001.pth").exists():
        assert job.state == "RUNNING" and time.monotonic() < deadline, job.stderr()
        time.sleep(0.05)
    train_net = json.loads((out / "run.lock").read_text())["pid"]
    task = int(Path(f"/proc/{train_net}/stat").read_text().rsplit(")", 1)[1].split()[1])  # its parent
    os.kill(task, signal.SIGUSR2)
    assert job.result() == 0
    log = job.stdout() + job.stderr()
    assert "Requeued job" in log and "train_net.py: stopped by SIGTERM after iteration" in log
    assert "Starting training from iteration 0" in log and "Starting training from iteration" in log.split("Requeued job")[1]
    assert_same_end(out, reference)


def test_on_slurm_each_node_starts_train_net_with_its_rank_and_the_first_nodes_address(monkeypatch):
    """The command of a job's task, in the environment SLURM gives the task of node 1 of a 2-node job."""
    from efl.engine.cluster import TRAIN_NET, TrainingJob

    for name, value in {
        "SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "2", "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NODEID": "1", "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_JOB_NODELIST": "gpu[07-08]",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    import submitit

    environment = submitit.JobEnvironment()
    command = TrainingJob(["--config-file", "c.yaml", "SOLVER.IMS_PER_BATCH", "16"], 8).command(environment)
    port = command[command.index("--dist-url") + 1].rsplit(":", 1)[1]
    assert command[1:] == [
        TRAIN_NET, "--resume", "--num-gpus", "8", "--num-machines", "2", "--machine-rank", "1",
        "--dist-url", f"tcp://gpu07:{port}", "--config-file", "c.yaml", "SOLVER.IMS_PER_BATCH", "16",
    ]  # fmt: skip
    monkeypatch.setenv("SLURM_NODEID", "0")
    assert TrainingJob([], 8).command(submitit.JobEnvironment())[-1] == f"tcp://gpu07:{port}"  # the same address


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["--num-gpus", "2"], "the job sets --num-gpus itself: leave them out"),
        (["--nodes", "2", "--cluster", "local"], "the local executor runs one node"),
        (["MODEL.EFL.SCAEL", "4"], "unknown config key MODEL.EFL.SCAEL"),
    ],
)
def test_submit_refuses_mistakes_before_submitting(arguments, message, tmp_path):
    import submit

    with pytest.raises(SystemExit) as stop:
        submit.main(["--cluster", "local", "--config-file", str(DEMO_CONFIG), *SMALL_OPTS, "OUTPUT_DIR", str(tmp_path), *arguments])
    assert stop.value.code.startswith("submit.py: error: ") and message in stop.value.code
    assert not (tmp_path / "submitit").exists()


def test_submit_waits_for_a_failing_job_and_exits_with_its_message(trained_demo, tmp_path, monkeypatch):
    """--wait: a job whose run fails (here: weights that cannot be read, found where the job loads them) ends
    submit.py with one line and a failing status."""
    import submit

    broken = tmp_path / "broken.pth"
    broken.write_bytes((trained_demo[0] / "model_final.pth").read_bytes()[:1000])
    arguments = ["--eval-only", *SMALL_OPTS, "MODEL.WEIGHTS", str(broken), "OUTPUT_DIR", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as stop:
        submit.main(["--cluster", "local", "--gpus-per-node", "1", "--wait", "--config-file", str(DEMO_CONFIG), *arguments])
    assert stop.value.code.startswith("submit.py: job ") and "\n" not in stop.value.code
    assert f"failed: train_net.py: error: cannot read {broken}" in stop.value.code and "_log.err)" in stop.value.code
