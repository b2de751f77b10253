"""
The engine's training, started through detectron2's ``launch`` as train_net.py starts it, with one hook added that
checks the EFL statistics after every iteration. Used by test_distributed.py; arguments are train_net.py's.

After each step, on every process:
- pos_grad, neg_grad and pos_neg are all-gathered: they must be bit-identical on all ranks;
- each rank's |dL/dz| of this step, summed per class over positive and negative cells from the logits' own
  gradients in float64, is all-gathered and added up: the buffers must have grown by that much.
Each rank writes what it saw to OUTPUT_DIR/statistics_rank<r>.json.
"""
import json
import os
from pathlib import Path

import torch

from detectron2.engine import HookBase, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from conftest import REPO, load_train_net
from efl.config import load
from efl.engine import build_training, launch


class CheckStatistics(HookBase):
    def __init__(self, output_dir):
        self.output_dir = output_dir
        self.captured = None
        self.expected = None
        self.report = {"iterations": 0, "max_relative_error": 0.0}

    def before_train(self):
        loss = self.loss_module()
        self.expected = torch.stack([loss.pos_grad, loss.neg_grad]).double().clone()
        forward_dense = loss.forward_dense

        def capture(levels, labels, normalizer):
            for x in levels:
                x.retain_grad()
            self.captured = (levels, labels)
            return forward_dense(levels, labels, normalizer)

        loss.forward_dense = capture

    def loss_module(self):
        model = self.trainer.model
        return getattr(model, "module", model).cls_loss

    def after_step(self):
        loss = self.loss_module()
        buffers = torch.stack([loss.pos_grad, loss.neg_grad, loss.pos_neg])
        for other in comm.all_gather(buffers):
            assert torch.equal(other, buffers), "EFL statistics differ between ranks"

        levels, labels = self.captured
        num_classes = loss.num_classes
        grads = [
            x.grad.double().reshape(x.shape[0], -1, num_classes, x.shape[2] * x.shape[3]).permute(0, 3, 1, 2)
            for x in levels
        ]
        rows = torch.cat([g.reshape(g.shape[0], -1, num_classes) for g in grads], dim=1).reshape(-1, num_classes)
        flat = labels.reshape(-1)
        valid = flat >= 0
        target = torch.zeros_like(rows)
        fg = valid & (flat < num_classes)
        target[fg.nonzero().squeeze(1), flat[fg]] = 1.0
        magnitude = rows.abs() * valid[:, None]
        local = torch.stack([(magnitude * target).sum(0), (magnitude * (1 - target)).sum(0)])
        self.expected += sum(comm.all_gather(local))
        error = ((buffers[:2].double() - self.expected).abs() / self.expected.clamp(min=1e-12)).max().item()
        assert error < 1e-4, f"statistics differ from the ranks' gradients by {error:.2e}"
        self.report["iterations"] += 1
        self.report["max_relative_error"] = max(self.report["max_relative_error"], error)
        self.report["final"] = buffers.tolist()
        self.report["world_size"] = comm.get_world_size()

    def after_train(self):
        path = Path(self.output_dir) / f"statistics_rank{comm.get_rank()}.json"
        path.write_text(json.dumps(self.report))


def worker(args, recipe):
    """What efl.engine.run does to train, with CheckStatistics added to the trainer's hooks."""
    default_setup(recipe.config, args)
    setup_logger(recipe.settings.output_dir, distributed_rank=comm.get_rank(), name="efl")
    training = build_training(recipe, resume=False)
    training.trainer.register_hooks([CheckStatistics(recipe.settings.output_dir)])
    training.trainer.train(training.start_iter, training.max_iter)


if __name__ == "__main__":
    os.chdir(REPO)
    args = load_train_net().argument_parser().parse_args()
    recipe = load(args.config_file, args.opts, num_processes=args.num_gpus * args.num_machines)
    launch(
        worker,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args, recipe),
        fork=True,  # as train_net.py starts its processes on the CPU
    )
