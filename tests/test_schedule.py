"""
Epoch-based schedules and the official (ceil) repeat-factor rounding, on known answers: a toy LVIS-format set
whose repeat factors are computed by hand, resolved into iterations in 1 and 2 processes (gloo) as train_net.py
resolves them.
"""
import itertools
import json
import math
import os
import socket
import subprocess
import sys
from collections import Counter

import pytest
import torch

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.data.datasets.lvis import load_lvis_json
from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler

from conftest import DEMO_CONFIG, REPO, SMALL_OPTS, small_cfg, small_recipe
from efl import ConfigError, check
from efl.config import LazyRecipe, YacsRecipe, load, load_lazy_config
from efl.data.samplers import RepeatFactorSampler, epoch_size_of
from efl.data.train_loader import ResumableSampler
from efl.engine import EpochSchedule, resolve_epoch_schedule
from efl.engine.schedule import resolve_and_log
from schedule_worker import report

# The toy set: 9 images, of which the last has no annotation (detectron2 drops it: 8 images remain). Categories
# 1-4 are in 8, 4, 2 and 1 of them. With REPEAT_THRESHOLD t = 1, r_c = max(1, sqrt(t / f_c)) = 1, sqrt(2) = 1.414,
# sqrt(4) = 2 exactly and sqrt(8) = 2.828; an image's factor is the largest of its categories'.
TOY_IMAGES = [[1, 4], [1, 3], [1, 3, 2], [1, 2], [1, 2], [1], [1], [1, 2], []]
TOY_CEIL_REPEATS = [3, 2, 2, 2, 2, 1, 1, 2]  # 15 images per epoch
TOY_EXPECTED_SIZE = math.sqrt(8) + 2 + 2 + 3 * math.sqrt(2) + 2  # 13.071 under stochastic rounding
TOY_OPTS = ["DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler", "DATALOADER.REPEAT_THRESHOLD", "1.0"]


def write_toy_lvis(path):
    images, annotations = [], []
    for index, categories in enumerate(TOY_IMAGES):
        images.append({"id": index + 1, "width": 64, "height": 48, "coco_url": f"http://toy/train/{index}.jpg"})
        for category in categories:
            annotations.append({
                "id": len(annotations) + 1, "image_id": index + 1, "category_id": category, "area": 100.0,
                "bbox": [4.0, 4.0, 10.0, 10.0], "segmentation": [[4, 4, 14, 4, 14, 14, 4, 14]],
            })  # fmt: skip
    categories = [{"id": c, "name": f"class{c}", "frequency": "r"} for c in range(1, 5)]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@pytest.fixture(scope="module")
def toy_lvis(tmp_path_factory):
    """The toy set's json file, registered as "efl_toy_lvis_train" in this process."""
    json_file = write_toy_lvis(tmp_path_factory.mktemp("toy_lvis") / "lvis_toy.json")
    DatasetCatalog.register("efl_toy_lvis_train", lambda: load_lvis_json(str(json_file), str(json_file.parent) + "/"))
    yield json_file
    DatasetCatalog.remove("efl_toy_lvis_train")


def toy_sampler(*opts):
    """The training sampler of the yacs front-end over the toy set, and its images per epoch."""
    arguments = small_recipe("DATASETS.TRAIN", ("efl_toy_lvis_train",), *TOY_OPTS, *opts).train_loader().arguments
    return arguments["sampler"], epoch_size_of(arguments["sampler"], len(arguments["dataset"]))


def test_the_toy_set_enlarges_to_the_hand_computed_sizes(toy_lvis):
    sampler, size = toy_sampler("DATALOADER.REPEAT_ROUNDING", "ceil")
    assert sampler._repeats.tolist() == TOY_CEIL_REPEATS
    assert size == 15 and isinstance(size, int)
    _, size = toy_sampler("DATALOADER.REPEAT_ROUNDING", "stochastic")
    assert size == pytest.approx(TOY_EXPECTED_SIZE, rel=1e-6)
    sampler, size = toy_sampler("DATALOADER.SAMPLER_TRAIN", "TrainingSampler")  # detectron2's, 8 annotated images
    assert type(sampler) is TrainingSampler and size == 8


def epochs_of(stream, size, count):
    return [list(itertools.islice(stream, size)) for _ in range(count)]


def test_ceil_rounding_repeats_each_image_its_ceil_times_reshuffled_every_epoch():
    factors = torch.tensor([1.0, 1.2, 2.0, 2.5, 1.0])  # ceil: 1, 2, 2, 3, 1 = 9 per epoch
    sampler = RepeatFactorSampler(factors, rounding="ceil", seed=7)
    assert sampler.epoch_size == 9
    epochs = epochs_of(iter(sampler), 9, 4)
    for epoch in epochs:
        assert Counter(epoch) == {0: 1, 1: 2, 2: 2, 3: 3, 4: 1}
    assert len({tuple(e) for e in epochs}) == 4  # a new order every epoch
    assert epochs == epochs_of(iter(RepeatFactorSampler(factors, rounding="ceil", seed=7)), 9, 4)  # same seed


def test_stochastic_rounding_is_detectron2s_own_stream():
    factors = torch.tensor([1.0, 1.2, 2.0, 2.5, 1.7])
    ours = itertools.islice(iter(RepeatFactorSampler(factors, rounding="stochastic", seed=3)), 200)
    theirs = itertools.islice(iter(RepeatFactorTrainingSampler(factors, seed=3)), 200)
    assert list(ours) == list(theirs)
    assert RepeatFactorSampler(factors, seed=3).epoch_size == pytest.approx(8.4)


def test_a_resumed_stream_continues_across_an_epoch_boundary():
    factors = torch.tensor([1.0, 1.2, 2.0, 2.5, 1.0])
    whole = list(itertools.islice(iter(RepeatFactorSampler(factors, rounding="ceil", seed=7)), 30))
    resumed = ResumableSampler(RepeatFactorSampler(factors, rounding="ceil", seed=7), epoch_size=9)
    resumed.skip = 7  # 2 images before the end of the first epoch
    assert list(itertools.islice(iter(resumed), 23)) == whole[7:]


def test_schedule_resolution_known_answers():
    # LVIS v1 without enlargement: 100,170 / 16 = 6,260.6, so 6,261 iterations per epoch (the last batch
    # completed, as in the official loader)
    assert resolve_epoch_schedule(100170, 16, 24, (16, 22), 1.0) == (6261, 150264, (100176, 137742), 6261)
    # fractions of epochs are truncated, as the official int(epochs x iterations per epoch)
    assert resolve_epoch_schedule(15, 2, 3, (2, 2.5), 0.5) == (8, 24, (16, 20), 4)
    assert resolve_epoch_schedule(TOY_EXPECTED_SIZE, 2, 3, (2, 2.5), 0.5) == (7, 21, (14, 17), 3)
    assert resolve_epoch_schedule(8, 4, 1.5) == (2, 3, (), 0)
    with pytest.raises(ValueError, match="above 0"):
        resolve_epoch_schedule(0, 16, 24)


LINE = (
    "3 epochs of 15 images after repeat-factor enlargement (each image ceil(r) times) at batch 2 = 8 iterations "
    "per epoch, 24 iterations; LR steps at 16 (epoch 2), 20 (epoch 2.5); warm-up 4 iterations (0.5 epochs)"
)
# the learning rate multiplier of that schedule: a linear warm-up from 0.001 over 4 iterations, x0.1 at 16 and 20
MULTIPLIERS = [0.001 + 0.999 * i / 4 for i in range(4)] + [1.0] * 12 + [0.1] * 4 + [0.01] * 4


def test_an_epoch_schedule_is_resolved_once_with_one_line(caplog):
    with caplog.at_level("INFO", logger="efl.engine.schedule"):
        resolved = resolve_and_log(EpochSchedule(3, (2, 2.5), 0.5), 15, 2, "ceil")
    assert resolved == (8, 24, (16, 20), 4) and caplog.messages == [LINE]


def lrs(scheduler, optimizer, max_iter):
    """The learning rate of each iteration under a recipe's scheduler (a ParamScheduler or a torch scheduler)."""
    from detectron2.solver import LRMultiplier

    if not isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
        scheduler = LRMultiplier(optimizer, scheduler, max_iter)
    values = []
    for _ in range(max_iter):
        values.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    return values


def test_both_front_ends_set_the_resolved_iterations_in_their_lr_schedule():
    resolved = resolve_epoch_schedule(15, 2, 3, (2, 2.5), 0.5)
    yacs = small_recipe(
        *TOY_OPTS, "SOLVER.IMS_PER_BATCH", "2", "SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR", "SOLVER.MAX_ITER",
        "40000", "SOLVER.WARMUP_ITERS", "1000", "SOLVER.MAX_EPOCHS", "3", "SOLVER.EPOCH_STEPS", "(2, 2.5)",
        "SOLVER.WARMUP_EPOCHS", "0.5",
    )  # fmt: skip
    assert yacs.settings.epochs == (3, (2, 2.5), 0.5) and yacs.settings.max_iter is None
    lazy = LazyRecipe(load_lazy_config(
        str(REPO / "tests" / "configs" / "fcos_tiny_epochs.py"),
        ["dataloader.train.total_batch_size=2", "train.max_epochs=3", "train.epoch_steps=[2,2.5]",
         "train.warmup_epochs=0.5", "lr_multiplier.scheduler.values=[1.0,0.1,0.01]"],
    ))  # fmt: skip
    assert lazy.settings.epochs == (3, (2, 2.5), 0.5) and lazy.settings.max_iter is None
    for recipe in (yacs, lazy):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
        assert lrs(recipe.build_lr_scheduler(optimizer, resolved), optimizer, 24) == pytest.approx(
            [0.5 * m for m in MULTIPLIERS], rel=1e-9
        )
    assert lazy.config.train.max_iter == 24
    assert list(lazy.config.lr_multiplier.scheduler.milestones) == [16, 20]


def test_a_schedule_in_iterations_is_the_configs_own():
    yacs = small_recipe("SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR", "SOLVER.STEPS", "(2,)", "SOLVER.MAX_ITER", "3")
    assert yacs.settings.epochs is None and yacs.settings.max_iter == 3
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.02)
    assert lrs(yacs.build_lr_scheduler(optimizer, None), optimizer, 3) == pytest.approx(
        [0.02 * 0.001, 0.02, 0.002], rel=1e-9
    )
    lazy = LazyRecipe(load_lazy_config(str(REPO / "tests" / "configs" / "fcos_tiny.py")))
    assert lazy.settings.epochs is None and lazy.settings.max_iter == 3


@pytest.mark.parametrize(
    "opts, message",
    [
        (["DATALOADER.REPEAT_ROUNDING", "floor"], "DATALOADER.REPEAT_ROUNDING must be one of stochastic, ceil"),
        (["SOLVER.MAX_EPOCHS", "2", "SOLVER.EPOCH_STEPS", "(2,)"], "SOLVER.EPOCH_STEPS must increase within"),
        (["SOLVER.MAX_EPOCHS", "2", "SOLVER.WARMUP_EPOCHS", "3.0"], "SOLVER.WARMUP_EPOCHS must lie in [0, 2]"),
        (["SOLVER.MAX_EPOCHS", "2", "DATALOADER.SAMPLER_TRAIN", "RandomSubsetTrainingSampler"], "with epochs"),
        (["SOLVER.MAX_EPOCHS", "2", "SOLVER.MAX_ITER", "1000"], "SOLVER.MAX_ITER is given too (1000)"),
    ],
)
def test_schedule_settings_that_cannot_run_stop_with_a_message(opts, message):
    cfg = small_cfg(*opts)
    for key in ("MAX_ITER", "WARMUP_ITERS"):  # back to detectron2's defaults (the demo config and SMALL_OPTS set them)
        if f"SOLVER.{key}" not in opts:
            cfg.SOLVER[key] = get_cfg().SOLVER[key]
    with pytest.raises(ConfigError) as error:
        check(YacsRecipe(cfg))
    assert message in str(error.value)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def schedule_opts(output_dir):
    # global batch 2 (1 image per process with 2 processes): 15 enlarged images = 8 iterations per epoch
    return [
        *SMALL_OPTS, *TOY_OPTS, "DATASETS.TRAIN", "('efl_toy_lvis_train',)", "MODEL.RETINANET.NUM_CLASSES", "4",
        "DATALOADER.REPEAT_ROUNDING", "ceil", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.LR_SCHEDULER_NAME",
        "WarmupMultiStepLR", "SOLVER.MAX_ITER", "40000", "SOLVER.WARMUP_ITERS", "1000", "SOLVER.MAX_EPOCHS", "3",
        "SOLVER.EPOCH_STEPS", "(2, 2.5)", "SOLVER.WARMUP_EPOCHS", "0.5", "OUTPUT_DIR", str(output_dir),
    ]  # fmt: skip


def assert_reports(output_dir, num_processes):
    base_lr = small_cfg().SOLVER.BASE_LR
    for rank in range(num_processes):
        result = json.loads((output_dir / f"schedule_rank{rank}.json").read_text())
        assert result["world_size"] == num_processes and result["max_iter"] == 24
        assert result["lrs"] == pytest.approx([base_lr * m for m in MULTIPLIERS], rel=1e-9)


def test_the_training_resolves_the_schedule_from_its_sampler(toy_lvis, tmp_path):
    report(None, load(str(DEMO_CONFIG), schedule_opts(tmp_path)))
    assert_reports(tmp_path, 1)


def test_every_process_resolves_the_same_schedule(toy_lvis, tmp_path):
    """2 gloo processes, started by detectron2's launch as train_net.py starts them."""
    run = subprocess.run(
        [sys.executable, str(REPO / "tests" / "schedule_worker.py"), "--config-file", str(DEMO_CONFIG),
         "--num-gpus", "2", "--dist-url", f"tcp://127.0.0.1:{free_port()}", *schedule_opts(tmp_path)],
        capture_output=True, text=True, env={**os.environ, "EFL_TOY_LVIS": str(toy_lvis), "OMP_NUM_THREADS": "1"},
        timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    output = run.stdout + run.stderr
    assert output.count(LINE) == 1, output[-4000:]  # printed by the main process
    assert_reports(tmp_path, 2)
