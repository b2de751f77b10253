"""
Two processes on the CPU (gloo), started as train_net.py starts them: the EFL statistics stay bit-identical on both
ranks after every iteration and equal what both ranks' gradients add up to (checked inside the run by
dist_worker.py), on one "machine" with 2 processes and on 2 "machines" with 1 process each; runs on one machine
take a free port.
"""
import json
import socket

import pytest
import torch
import torch.distributed as dist

import warm_start
from detectron2.engine import default_argument_parser

from conftest import REPO, load_train_net
from efl import ConfigError
from efl.engine import launch
from interruptions import ENV, yacs_command

WORKER = REPO / "tests" / "dist_worker.py"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reports(output_dir):
    return [json.loads((output_dir / f"statistics_rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def one_machine(uninterrupted):
    """The 2-process run of interruptions.py's settings (shared with test_preemption_gloo.py)."""
    output_dir, _ = uninterrupted("yacs", 2)
    return reports(output_dir)


def test_statistics_agree_across_ranks_after_every_iteration(one_machine):
    for report in one_machine:
        assert report["world_size"] == 2 and report["iterations"] == 10
        assert report["max_relative_error"] < 1e-4
    assert one_machine[0]["final"] == one_machine[1]["final"]
    assert max(one_machine[0]["final"][0]) > 0, "no positive gradient was recorded"


def test_two_machines_reach_the_same_statistics(one_machine, tmp_path):
    port = free_port()
    machines = []
    for rank in (0, 1):
        command = yacs_command(tmp_path, 1)  # the same settings as the 2-process run, but for:
        command[1] = str(WORKER)
        command[3:4] = ["1", "--num-machines", "2", "--machine-rank", str(rank), "--dist-url", f"tcp://127.0.0.1:{port}"]
        command += ["DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler", "DATALOADER.REPEAT_THRESHOLD", "0.3",
                    "DATALOADER.REPEAT_ROUNDING", "ceil"]  # fmt: skip
        machines.append(warm_start.popen(command, ENV, stderr=str(tmp_path / f"machine{rank}.stderr")))
    for rank, process in enumerate(machines):
        assert process.wait(timeout=600) == 0, (tmp_path / f"machine{rank}.stderr").read_text()[-4000:]
    two_machines = reports(tmp_path)
    assert all(r["world_size"] == 2 and r["iterations"] == 10 for r in two_machines)
    assert two_machines[0]["final"] == two_machines[1]["final"]
    for got, expected in zip(two_machines[0]["final"], one_machine[0]["final"]):
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-12)


def _sum_of_ones():
    ones = torch.ones(1)
    dist.all_reduce(ones)
    assert ones.item() == dist.get_world_size() == 2


def test_a_run_on_one_machine_takes_a_free_port_not_the_one_detectron2_gives_each_user():
    # detectron2's default --dist-url is one port per user: a second run on the machine would stop on it
    assert load_train_net().argument_parser().get_default("dist_url") == "auto"
    per_user = int(default_argument_parser().get_default("dist_url").rsplit(":", 1)[1])
    with socket.socket() as other_run:
        other_run.bind(("127.0.0.1", per_user))
        other_run.listen()
        launch(_sum_of_ones, 2, dist_url="auto", fork=True)
    with pytest.raises(ConfigError, match="--num-machines > 1 needs --dist-url tcp://<machine 0's address>:<port>"):
        launch(_sum_of_ones, 1, num_machines=2, dist_url="auto")
