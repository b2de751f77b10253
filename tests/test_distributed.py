"""
Two processes on the CPU (gloo), started by train_net.py's launch: the EFL statistics stay bit-identical on both
ranks after every iteration and equal what both ranks' gradients add up to (checked inside the run by
dist_worker.py), on one "machine" with 2 processes and on 2 "machines" with 1 process each.
"""
import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import DEMO_CONFIG, REPO, SMALL_OPTS

WORKER = REPO / "tests" / "dist_worker.py"
OPTS = [*SMALL_OPTS, "SOLVER.MAX_ITER", "3", "DATASETS.TEST", "()", "SOLVER.CHECKPOINT_PERIOD", "1000"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(output_dir, port, num_gpus, num_machines=1, machine_rank=0):
    command = [
        sys.executable, str(WORKER), "--config-file", str(DEMO_CONFIG),
        "--num-gpus", str(num_gpus), "--num-machines", str(num_machines), "--machine-rank", str(machine_rank),
        "--dist-url", f"tcp://127.0.0.1:{port}", *OPTS, "OUTPUT_DIR", str(output_dir),
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())


def finish(process):
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-4000:]


def reports(output_dir):
    return [json.loads((output_dir / f"statistics_rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def one_machine(tmp_path_factory):
    out = tmp_path_factory.mktemp("one_machine")
    finish(start(out, free_port(), num_gpus=2))
    return reports(out)


def test_statistics_agree_across_ranks_after_every_iteration(one_machine):
    for report in one_machine:
        assert report["world_size"] == 2 and report["iterations"] == 3
        assert report["max_relative_error"] < 1e-4
    assert one_machine[0]["final"] == one_machine[1]["final"]
    assert max(one_machine[0]["final"][0]) > 0, "no positive gradient was recorded"


def test_two_machines_reach_the_same_statistics(one_machine, tmp_path):
    port = free_port()
    machines = [start(tmp_path, port, num_gpus=1, num_machines=2, machine_rank=r) for r in (0, 1)]
    for process in machines:
        finish(process)
    two_machines = reports(tmp_path)
    assert all(r["world_size"] == 2 and r["iterations"] == 3 for r in two_machines)
    assert two_machines[0]["final"] == two_machines[1]["final"]
    for got, expected in zip(two_machines[0]["final"], one_machine[0]["final"]):
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-12)
