"""
Preemption loses nothing, for a LazyConfig: EFLFCOS counted in epochs, 2 gloo processes stopped by SIGTERM to their
process group and later killed with SIGKILL, resumes bit-identical to an uninterrupted run, each start resolving the
same schedule.
"""
import signal

from interruptions import (
    Started,
    assert_same_end,
    lazy_command,
    run_to_the_end,
    sigkill_once_training,
    stop_once_training,
)


def test_a_lazy_config_run_stopped_then_killed_resumes_to_the_uninterrupted_end(uninterrupted, tmp_path):
    """EFLFCOS from a LazyConfig counted in epochs, 2 gloo processes: SIGTERM to the group; --resume; SIGKILL;
    --resume. Every start resolves the same schedule and prints the same line."""
    reference, reference_run = uninterrupted("lazy", 2)
    out = tmp_path / "run"
    stopped_at = stop_once_training(lazy_command(out, 2), out, -1, lambda run: run.signal_group(signal.SIGTERM), "SIGTERM")
    sigkill_once_training(Started(lazy_command(out, 2, "--resume"), out), stopped_at)
    resumed = run_to_the_end(lazy_command(out, 2, "--resume"))
    line = (
        "0.17 epochs of 189 images after repeat-factor enlargement (each image ceil(r) times) at batch 4 = 48 "
        "iterations per epoch, 8 iterations; LR steps at 4 (epoch 0.1); warm-up 1 iterations (0.03 epochs)"
    )
    for log in (reference_run.stdout + reference_run.stderr, resumed.stdout + resumed.stderr):
        assert log.count(line) == 1, log[-3000:]
    assert_same_end(out, reference)
