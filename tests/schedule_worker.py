"""
train_net.py's ``main`` started through detectron2's ``launch`` (as train_net.py starts it), with a Trainer that
reports instead of training. Arguments are train_net.py's; the LVIS-format file named by $EFL_TOY_LVIS is registered in
every process as the dataset "efl_toy_lvis_train" (its images are never read). Used by test_schedule.py.

Each process writes to OUTPUT_DIR/schedule_rank<r>.json what its Trainer runs by: max_iter, the resolved
SOLVER.MAX_ITER / STEPS / WARMUP_ITERS, and the learning rate of every iteration as its lr scheduler sets it.
"""
import json
import os
from pathlib import Path

from detectron2.data import DatasetCatalog
from detectron2.data.datasets.lvis import load_lvis_json
from detectron2.engine import launch
from detectron2.utils import comm

from dist_worker import REPO, load_train_net


def worker(args):
    json_file = os.environ["EFL_TOY_LVIS"]
    DatasetCatalog.register("efl_toy_lvis_train", lambda: load_lvis_json(json_file, os.path.dirname(json_file) + "/"))
    train_net = load_train_net()

    class ReportingTrainer(train_net.Trainer):
        def train(self):
            lrs = []
            for _ in range(self.max_iter):
                lrs.append(self.optimizer.param_groups[0]["lr"])
                self.scheduler.step()
            solver = self.cfg.SOLVER
            report = {
                "world_size": comm.get_world_size(),
                "max_iter": self.max_iter,
                "solver": [solver.MAX_ITER, list(solver.STEPS), solver.WARMUP_ITERS],
                "lrs": lrs,
            }
            (Path(self.cfg.OUTPUT_DIR) / f"schedule_rank{comm.get_rank()}.json").write_text(json.dumps(report))

    train_net.Trainer = ReportingTrainer
    train_net.main(args, train_net.build_config(args))


if __name__ == "__main__":
    os.chdir(REPO)
    args = load_train_net().argument_parser().parse_args()
    launch(worker, args.num_gpus, dist_url=args.dist_url, args=(args,))
