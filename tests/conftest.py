"""Shared test set-up: a per-session cache for the synthetic datasets, and small configs of the demo model."""
import os
import shutil
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "Synthetic" / "retinanet_R_18_FPN_demo_efl.yaml"


# The synthetic sets are generated once per test session, away from the user's cache. Set before any test
# module imports efl, which registers the datasets with their paths.
_CACHE = tempfile.mkdtemp(prefix="efl_test_cache_")
os.environ["EFL_CACHE_DIR"] = _CACHE


def pytest_unconfigure(config):
    shutil.rmtree(_CACHE, ignore_errors=True)


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
