# LVIS v1, 24 epochs, for the LazyConfig (.py) models: the data, optimiser, schedule and training settings of
# configs/LVISv1/Base-RetinaNet-LVISv1-24ep.yaml, in LazyConfig form. A model config adds `model` and its
# output_dir and init_checkpoint.
# As in that .yaml, the epochs are counted over the plain list: LVIS v1 train has 100,170 images, at batch 16 an
# epoch is 6,260.6 iterations, so 24 epochs are 150,255 iterations with the learning rate divided by 10 after
# epochs 16 (100,170) and 22 (137,734). The sampler is detectron2's repeat-factor sampling (stochastic rounding).
# To count epochs over the enlarged list as the authors' code does (docs/reproduction.md, "Epochs as the authors count them"),
# add: dataloader.train.sampler.rounding=ceil train.max_epochs=24 train.epoch_steps=[16,22] train.warmup_epochs=1
# (the warm-up in epochs; without it there is none).
import torch
from fvcore.common.param_scheduler import MultiStepParamScheduler
from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import DatasetMapper, build_detection_test_loader, build_detection_train_loader
from detectron2.data import get_detection_dataset_dicts
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params

from efl import LVISEvaluator
from efl.data.samplers import RepeatFactorSampler

MAX_ITER = 150255

dataloader = OmegaConf.create()
dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="lvis_v1_train"),
    # repeat-factor sampling, threshold 0.001 (it reads the training set a second time for the class counts);
    # "stochastic" is detectron2's RepeatFactorTrainingSampler, "ceil" the authors' rounding
    sampler=L(RepeatFactorSampler)(
        repeat_factors=L(RepeatFactorSampler.repeat_factors_from_category_frequency)(
            dataset_dicts="${...dataset}", repeat_thresh=0.001
        ),
        rounding="stochastic",
    ),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(
                short_edge_length=(640, 672, 704, 736, 768, 800), max_size=1333, sample_style="choice"
            ),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="BGR",
    ),
    total_batch_size=16,  # 8 GPUs x 2 images
    num_workers=4,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="lvis_v1_val", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=4,
)
dataloader.evaluator = L(LVISEvaluator)(
    dataset_name="${..test.dataset.names}",
    output_dir="${train.output_dir}/inference/${..test.dataset.names}",
    max_dets_per_image=300,
    frequency_from="${..train.dataset.names}",  # for your own data, whose categories lack LVIS's frequency groups
)

optimizer = L(torch.optim.SGD)(
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),  # params.model: set by the trainer
    lr=0.01,  # RetinaNet's learning rate at batch 16
    momentum=0.9,
    weight_decay=1e-4,
)
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[100170, 137734], num_updates=MAX_ITER),
    warmup_length=1000 / MAX_ITER,
    warmup_method="linear",
    warmup_factor=0.001,
)

train = dict(
    output_dir="./output",
    init_checkpoint="",
    max_iter=MAX_ITER,
    amp=dict(enabled=False),
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period=10000, max_to_keep=100),
    eval_period=0,  # evaluate once, after the last iteration
    log_period=20,
    device="cuda",
    clip_gradients=None,
    reset_efl_statistics=False,
)
