#!/usr/bin/env python
"""
Train and evaluate EFL (and focal-loss baseline) detectors with detectron2.

    python train_net.py --config-file configs/LVISv1/retinanet_R_50_FPN_24ep_efl.yaml --num-gpus 8
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS model_final.pth
    python train_net.py --config-file ... --resume
    python train_net.py --config-file configs/LVISv1/fcos_R_50_FPN_24ep_efl.py --num-gpus 8 train.max_iter=1000

A .py file is a LazyConfig (overrides as key=value), trained by efl.engine.lazy; a .yaml file a yacs config
(overrides as KEY VALUE), trained by the Trainer below. Either config is built and checked once, in this process,
before any worker process starts; this process (on machine 0) holds the output directory's lock until the run
ends.
"""
import argparse
import logging
import sys
import weakref

from detectron2.config import CfgNode
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    create_ddp_model,
    default_argument_parser,
    default_setup,
)
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from efl import ConfigError, build_evaluator, check_config
from efl.checks import check_lazy_config
from efl.config import load_config
from efl.config_keys import LAZY_KEYS, YACS_KEYS
from efl.data import naming_malformed_dataset_files, register_datasets
from efl.data.train_loader import build_resumable_train_loader
from efl.data.transforms import build_test_loader
from efl.engine import (
    FULL_MODEL,
    EFLCheckpointer,
    FullModelGradientClipping,
    ReportNonFiniteStatistics,
    RevertStatisticsOfSkippedSteps,
    launch_run,
    reset_efl_statistics,
    with_epoch_schedule,
)
from efl.engine import lazy
from efl.lazy_config import load_lazy_config
from efl.modeling.efl_detector import leave_class_check_to_the_loader


class Trainer(DefaultTrainer):
    def __init__(self, cfg, trust_pickle: bool = False):
        # DefaultTrainer.__init__, with five differences:
        # - DistributedDataParallel gets device_ids only on GPUs (DDP refuses them for a model on the CPU, which is
        #   how CPU/gloo training runs);
        # - the training loader is resumable (see resume_or_load), skips unreadable images and checks every
        #   annotation's class (so the model need not check its ground-truth classes each step);
        # - a schedule in epochs (SOLVER.MAX_EPOCHS) is resolved into iterations from the training set's size;
        # - the step-running trainer gets the hooks that must run between backward and the optimizer step:
        #   SOLVER.CLIP_GRADIENTS of type "full_model", and under AMP the undoing of EFL statistics of skipped steps;
        # - the checkpointer (EFLCheckpointer) writes atomically, reads safely (``trust_pickle``: MODEL.WEIGHTS may run
        #   code), loads weights only when they fit (MODEL.ALLOW_PARTIAL_WEIGHTS) and resumes from a readable file.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader, self._train_sampler = build_resumable_train_loader(cfg)
        leave_class_check_to_the_loader(model)
        # SOLVER.MAX_EPOCHS: MAX_ITER, STEPS and WARMUP_ITERS from the data, for everything built below
        cfg = with_epoch_schedule(cfg, self._train_sampler.epoch_size)
        on_gpu = next(model.parameters()).device.type == "cuda"
        model = create_ddp_model(
            model, broadcast_buffers=False, device_ids=[comm.get_local_rank()] if on_gpu else None
        )
        trainer_class = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = trainer_class(model, data_loader, optimizer)
        clip = cfg.SOLVER.CLIP_GRADIENTS
        if clip.ENABLED and clip.CLIP_TYPE == FULL_MODEL:
            self._trainer.register_hooks([FullModelGradientClipping(clip.CLIP_VALUE, clip.NORM_TYPE)])
        if cfg.SOLVER.AMP.ENABLED:
            self._trainer.register_hooks([RevertStatisticsOfSkippedSteps()])
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = EFLCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            allow_partial=cfg.MODEL.ALLOW_PARTIAL_WEIGHTS,
            trust_pickle=trust_pickle,
            trainer=weakref.proxy(self),
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks() + [ReportNonFiniteStatistics()])

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume)
        # Continue the sampler's index stream where the checkpoint left it (stock detectron2 restarts it).
        self._train_sampler.skip = self.start_iter * (self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size())
        resumed = resume and self.checkpointer.has_checkpoint()
        if self.cfg.MODEL.EFL.RESET_STATISTICS and not resumed:
            reset_efl_statistics(self.model, "MODEL.EFL.RESET_STATISTICS")

    @classmethod
    def build_optimizer(cls, cfg, model):
        if cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == FULL_MODEL:  # clipped by a hook instead, see __init__
            cfg = cfg.clone()
            cfg.defrost()
            cfg.SOLVER.CLIP_GRADIENTS.ENABLED = False
        return super().build_optimizer(cfg, model)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)


def argument_parser() -> argparse.ArgumentParser:
    parser = default_argument_parser()
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="load MODEL.WEIGHTS (train.init_checkpoint) even when it holds objects other than weights, whose "
        "unpickling runs code from the file: only for files whose origin you trust",
    )
    return parser


def build_config(args) -> CfgNode:
    """The config of ``args``, with the datasets of its DATASETS.REGISTER registered (in this process)."""
    cfg = load_config(args.config_file, args.opts)
    register_datasets(cfg.DATASETS.REGISTER)
    return cfg


def main(args, cfg: CfgNode):
    """One process's work; ``cfg`` was built and checked once, before the processes started."""
    register_datasets(cfg.DATASETS.REGISTER)  # launch's worker processes start afresh
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="efl")  # our modules' messages too
    with naming_malformed_dataset_files(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)):
        if args.eval_only:
            model = Trainer.build_model(cfg)
            EFLCheckpointer(
                model, cfg.OUTPUT_DIR, allow_partial=cfg.MODEL.ALLOW_PARTIAL_WEIGHTS, trust_pickle=args.trust_pickle
            ).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
            res = Trainer.test(cfg, model)
            if comm.is_main_process():
                verify_results(cfg, res)
            return res

        trainer = Trainer(cfg, trust_pickle=args.trust_pickle)
        trainer.resume_or_load(resume=args.resume)
        return trainer.train()


if __name__ == "__main__":
    args = argument_parser().parse_args()
    num_processes = args.num_gpus * args.num_machines
    checks = dict(
        eval_only=args.eval_only, resume=args.resume, num_processes=num_processes, trust_pickle=args.trust_pickle
    )
    try:
        # Once, before any process starts: bad settings, data or weights stop here with a message.
        if args.config_file.endswith(".py"):  # a LazyConfig: efl.engine.lazy trains and evaluates it
            cfg = load_lazy_config(args.config_file, args.opts, eval_only=args.eval_only)
            register_datasets(cfg.dataloader.get("register") or ())
            check_lazy_config(cfg, **checks)
            launch_run(lazy.main, args, cfg, cfg.train.output_dir, LAZY_KEYS)
        else:
            cfg = build_config(args)
            check_config(cfg, **checks)
            launch_run(main, args, cfg, cfg.OUTPUT_DIR, YACS_KEYS)
    except ConfigError as e:  # also one found inside a worker process, e.g. an unreadable checkpoint
        sys.exit(f"train_net.py: error: {e}")
