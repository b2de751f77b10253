"""
The engine's training, built as each process of train_net.py builds it, then a report instead of training. Arguments
are train_net.py's; the LVIS-format file named by $EFL_TOY_LVIS is registered in every process as the dataset
"efl_toy_lvis_train" (its images are never read). Used by test_schedule.py.

Each process writes to OUTPUT_DIR/schedule_rank<r>.json what its training runs by: max_iter and the learning rate of
every iteration as its LR scheduler hook sets it.
"""
import json
import os
from pathlib import Path

from detectron2.data import DatasetCatalog
from detectron2.data.datasets.lvis import load_lvis_json
from detectron2.engine import hooks
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from conftest import REPO, load_train_net
from efl.config import load
from efl.engine import build_training, launch


def report(args, recipe) -> None:
    """Build ``recipe``'s training in this process and write its schedule (the toy set registered)."""
    if "efl_toy_lvis_train" not in DatasetCatalog.list():
        json_file = os.environ["EFL_TOY_LVIS"]
        DatasetCatalog.register("efl_toy_lvis_train", lambda: load_lvis_json(json_file, os.path.dirname(json_file) + "/"))
    setup_logger(distributed_rank=comm.get_rank(), name="efl")  # as efl.engine.run does: the main process logs
    training = build_training(recipe, resume=False)
    trainer = training.trainer
    trainer.iter, trainer.max_iter = training.start_iter, training.max_iter  # as TrainerBase.train sets them
    (scheduler,) = [h for h in trainer._hooks if isinstance(h, hooks.LRScheduler)]
    scheduler.before_train()
    lrs = []
    for _ in range(training.max_iter):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        scheduler.scheduler.step()
    result = {"world_size": comm.get_world_size(), "max_iter": training.max_iter, "lrs": lrs}
    (Path(recipe.settings.output_dir) / f"schedule_rank{comm.get_rank()}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    os.chdir(REPO)
    args = load_train_net().argument_parser().parse_args()
    recipe = load(args.config_file, args.opts, num_processes=args.num_gpus)
    launch(report, args.num_gpus, dist_url=args.dist_url, args=(args, recipe), fork=True)
