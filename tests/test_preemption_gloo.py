"""
Preemption loses nothing, on 2 gloo processes: SIGTERM to the launching process only, SIGUSR1 to one worker only,
SIGINT twice to the whole process group; each stop saves the iteration the run was in, exits with status 75 and one
line, and --resume ends bit-identical to an uninterrupted run; the state of 2 processes resumes on 1.
"""
import os
import shutil
import signal
from argparse import Namespace

from conftest import DEMO_CONFIG, SMALL_OPTS, small_recipe
from efl.engine import run
from interruptions import (
    assert_kept_and_trained_on,
    assert_same_end,
    run_to_the_end,
    stop_once_training,
    yacs_command,
)


def test_two_processes_stopped_every_way_resume_to_the_uninterrupted_end(uninterrupted, tmp_path):
    """
    2 gloo processes, the ceil-rounded repeat-factor sampler: SIGTERM to the launching process only (it passes it
    on); --resume; SIGUSR1 to one worker only (the workers agree on the stop), then SIGINT twice to the whole group
    while it stops (more signals change nothing); --resume to the end.
    """
    reference, _ = uninterrupted("yacs", 2)
    out = tmp_path / "run"
    stopped_at = stop_once_training(yacs_command(out, 2), out, -1, lambda run: run.signal_launcher(signal.SIGTERM), "SIGTERM")
    shutil.copytree(out, tmp_path / "for_one_process")

    def one_worker_then_everyone_twice(run):
        os.kill(run.workers()[1], signal.SIGUSR1)
        run.signal_group(signal.SIGINT)
        run.signal_group(signal.SIGINT)

    resume = yacs_command(out, 2, "--resume")
    stop_once_training(resume, out, stopped_at, one_worker_then_everyone_twice, "SIGINT")  # what the launcher got
    run_to_the_end(resume)
    assert_same_end(out, reference)

    # another number of processes: the state of 2 processes resumed by 1, here in this process (efl.engine.run)
    one = tmp_path / "for_one_process"
    first_stop = int((one / "last_checkpoint").read_text()[len("model_") : -len(".pth")])
    command = yacs_command(one, 2, "--resume")
    opts = command[command.index("--resume") + 1 :]
    args = Namespace(eval_only=False, resume=True, trust_pickle=False, config_file=str(DEMO_CONFIG), opts=opts)
    run(args, small_recipe(*opts[len(SMALL_OPTS) :]))
    assert_kept_and_trained_on(one / "model_final.pth", one / f"model_{first_stop:07d}.pth")
