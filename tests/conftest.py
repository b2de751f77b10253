"""Shared test set-up: a per-session cache for the synthetic datasets, and small configs of the demo model."""
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "Synthetic" / "retinanet_R_18_FPN_demo_efl.yaml"
# The tools import each other as scripts do, from their own folder; so do the tests that use them.
sys.path.insert(0, str(REPO / "tools"))


# The synthetic sets are generated once per test session, away from the user's cache. Set before any test
# module imports efl, which registers the datasets with their paths; inherited by the processes the tests start
# (whose scripts may import this module too: they keep the session's cache).
_OWN_CACHE = "EFL_TEST_SESSION" not in os.environ
if _OWN_CACHE:
    os.environ["EFL_CACHE_DIR"] = os.environ["EFL_TEST_SESSION"] = tempfile.mkdtemp(prefix="efl_test_cache_")


# Every test process, and each process its tests start (they inherit the variable), computes in one thread. make
# test runs 2 pytest-xdist workers, one per core: two workers of two OpenMP threads each on two cores spin-wait for
# each other and run several times slower. And some tests fork processes from the test process (as train_net.py
# forks its workers on the CPU), which hang in OpenMP's barrier if the test process used more than one thread
# before. Set before torch is imported.
os.environ["OMP_NUM_THREADS"] = "1"


# make test's pytest-xdist workers take whole modules (--dist loadscope: a module's fixtures serve all its tests),
# in this order (--no-loadscope-reorder; xdist would order them by their number of tests): the longest first, so
# that the two workers finish together, and the modules that share a session run (trained_demo, uninterrupted)
# apart, so that a worker seldom waits for the other to produce it.
LONGEST_FIRST = (
    "test_submit", "test_gpu_report", "test_lazy_config", "test_kernels", "test_export", "test_preemption_gloo",
    "test_tools", "test_train_net", "test_preemption", "test_preemption_lazy", "test_released", "test_synthetic_lvis",
    "test_mixed_precision", "test_schedule", "test_full_disk", "test_resume", "test_lock", "test_custom_dataset",
    "test_distributed", "test_fcos",
)  # fmt: skip


def pytest_collection_modifyitems(config, items):
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__, len(rank)))


def shared_run(name: str, produce: Callable[[Path], subprocess.CompletedProcess]):
    """
    A run that the whole test session shares, in every pytest-xdist worker: ``produce(folder)`` run once, by the
    first worker that asks (the others wait for it, and reuse its folder). Returns (folder, the finished process).
    """
    root = Path(os.environ["EFL_TEST_SESSION"])
    record = root / f"{name}.json"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            run = produce(root / name)
            record.write_text(json.dumps([list(map(str, run.args)), run.returncode, run.stdout, run.stderr]))
    return root / name, subprocess.CompletedProcess(*json.loads(record.read_text()))


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(os.environ["EFL_CACHE_DIR"], ignore_errors=True)


# The demo config shrunk for tests: the 8-class test set, 96 px images, a 64-channel FPN with one conv per
# head branch, batch 4, 3 iterations, on the CPU. Strings, so they serve train_net.py's command line too.
SMALL_OPTS = [
    "MODEL.DEVICE", "cpu",
    "MODEL.RETINANET.NUM_CLASSES", "8",
    "MODEL.RETINANET.NUM_CONVS", "1",
    "MODEL.FPN.OUT_CHANNELS", "64",
    "DATASETS.TRAIN", "('efl_synth_test_train',)",
    "DATASETS.TEST", "('efl_synth_test_val',)",
    "DATALOADER.NUM_WORKERS", "0",
    "INPUT.MIN_SIZE_TRAIN", "(96,)",
    "INPUT.MIN_SIZE_TEST", "96",
    "SOLVER.IMS_PER_BATCH", "4",
    "SOLVER.MAX_ITER", "3",
    "SOLVER.WARMUP_ITERS", "1",
    "TEST.DETECTIONS_PER_IMAGE", "50",
]  # fmt: skip


def small_cfg(*opts):
    """The demo's EFL config with SMALL_OPTS and then ``opts`` applied."""
    from detectron2.config import get_cfg

    from efl import add_efl_config

    cfg = get_cfg()
    add_efl_config(cfg)
    cfg.merge_from_file(str(DEMO_CONFIG))
    cfg.merge_from_list(SMALL_OPTS + list(opts))
    return cfg


def small_recipe(*opts, config=DEMO_CONFIG):
    """The engine's recipe of the yacs ``config`` (the demo's EFL RetinaNet) with SMALL_OPTS and ``opts``."""
    from efl.config import YacsRecipe, load_config

    return YacsRecipe(load_config(str(config), SMALL_OPTS + [str(o) for o in opts]))


def train_net(*args, env=None, timeout=600, fresh=False):
    """train_net.py with ``args`` in a process of its own, as a user runs it: forked by warm_start.py's zygote, or
    with ``fresh``, a new interpreter."""
    import warm_start

    command = [sys.executable, str(REPO / "train_net.py"), *map(str, args)]
    env = {**os.environ, **(env or {})}
    if fresh:
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=timeout)
    return warm_start.run(command, env, timeout=timeout)


def assert_stops_with(run, *fragments):
    """train_net.py stopped with one line, ``train_net.py: error: ...`` holding every fragment, and no traceback."""
    assert run.returncode != 0
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("train_net.py: error: ")]
    assert len(errors) == 1, run.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], run.stderr[-3000:]


_TRAIN_NET = []


def load_train_net():
    """train_net.py as a module (it is a script, not a package member)."""
    import importlib.util

    if not _TRAIN_NET:
        spec = importlib.util.spec_from_file_location("train_net", REPO / "train_net.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _TRAIN_NET.append(module)
    return _TRAIN_NET[0]


def stops_before_any_process(*args) -> str:
    """
    train_net.py's ``main`` with the command line ``args``, in this process: it must stop with a ConfigError before
    it would take the lock and start any process. Returns the error's message, checked to be one line (train_net.py
    prints it as ``train_net.py: error: <message>``, as assert_stops_with checks on real runs).
    """
    import pytest

    from efl import ConfigError

    train_net = load_train_net()
    parsed = train_net.argument_parser().parse_args([str(a) for a in args])
    launched = []
    original, train_net.launch_run = train_net.launch_run, lambda *a: launched.append(a)
    try:
        with pytest.raises(ConfigError) as error:
            train_net.main(parsed)
    finally:
        train_net.launch_run = original
    assert not launched
    message = str(error.value)
    assert message and "\n" not in message, message
    return message


@pytest.fixture(scope="session")
def trained_demo():
    """A real train_net.py run of the test-size demo model, in a new interpreter as a user starts it: 4 iterations,
    then LVIS evaluation. Its OUTPUT_DIR (model_final.pth, metrics.json, inference/: read only, shared) and the
    finished process."""
    def train(out):
        return train_net("--config-file", DEMO_CONFIG, *SMALL_OPTS, "SOLVER.MAX_ITER", 4, "OUTPUT_DIR", out, fresh=True)

    out, run = shared_run("trained_demo", train)
    assert run.returncode == 0, run.stderr[-3000:]
    return out, run


@pytest.fixture(autouse=True)
def _environment_restored():
    """detectron2's seed_all_rng (an in-process run's) sets PYTHONHASHSEED in this process's environment; each test
    starts from the session's, which the runs that warm_start.py forks must match."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(autouse=True)
def _propagating_loggers():
    """detectron2's setup_logger (which efl.engine.run calls, in some tests in this process) stops its loggers from
    propagating; caplog reads what propagates."""
    yield
    for name in ("efl", "detectron2", "d2", "fvcore"):
        logging.getLogger(name).propagate = True


@pytest.fixture(scope="session")
def uninterrupted():
    """
    ``uninterrupted(system, num_processes)``: the output directory (read only, shared) of a finished,
    uninterrupted run of interruptions.py's deterministic settings ("yacs" or "lazy"), run once per session. The
    2-process yacs run is tests/dist_worker.py's: train_net.py's training with a hook that checks the EFL
    statistics on both ranks after every iteration (test_distributed.py reads its reports).
    """
    import interruptions

    def command(system: str, num_processes: int, out: Path):
        if system == "lazy":
            return interruptions.lazy_command(out, num_processes)
        command = interruptions.yacs_command(out, num_processes)
        if num_processes > 1:
            command[1] = str(REPO / "tests" / "dist_worker.py")
        return command

    def run(system: str, num_processes: int):
        return shared_run(
            f"uninterrupted_{system}_{num_processes}",
            lambda out: interruptions.run_to_the_end(command(system, num_processes, out)),
        )

    return run
