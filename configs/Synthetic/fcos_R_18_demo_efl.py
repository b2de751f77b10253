# FCOS with Equalized Focal Loss on the embedded synthetic long-tailed set, sized like the RetinaNet demo
# (Base-Demo-R18.yaml): R-18-FPN from scratch with BN, a 128-channel FPN and 2 convs per head branch, 128 px
# inputs, 450 iterations of batch 8 with a cosine schedule. A LazyConfig (FCOS has no yacs config in detectron2):
#   python train_net.py --config-file configs/Synthetic/fcos_R_18_demo_efl.py train.device=cpu
import torch
from fvcore.common.param_scheduler import CosineParamScheduler
from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.data import DatasetMapper, build_detection_test_loader, build_detection_train_loader
from detectron2.data import get_detection_dataset_dicts
from detectron2.layers import ShapeSpec
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params

from efl import EFLFCOS, LVISEvaluator

CHANNELS = 128

# detectron2's FCOS (configs/common/models/fcos.py) with EFL: only the target changes, the rest is sizing.
model = model_zoo.get_config("common/models/fcos.py").model
model._target_ = EFLFCOS
model.num_classes = 18  # 6 look-alike families of 3 classes (efl.data.DEMO_SPEC)
model.backbone.bottom_up.stem.norm = "BN"  # from scratch: BN that trains, nothing frozen
model.backbone.bottom_up.stages.norm = "BN"
model.backbone.bottom_up.stages.depth = 18
del model.backbone.bottom_up.stages.stride_in_1x1  # a bottleneck option
model.backbone.out_channels = CHANNELS
model.backbone.top_block.in_channels = CHANNELS
model.head.input_shape = [ShapeSpec(channels=CHANNELS)] * 5
model.head.conv_dims = [CHANNELS, CHANNELS]
model.test_score_thresh = 0.001  # LVIS AP counts low-score detections too
model.max_detections_per_image = 100

dataloader = OmegaConf.create()
dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="efl_synth_lt_train"),
    mapper=L(DatasetMapper)(
        is_train=True,
        # the 160 px images are trained and tested at 128 px, as in the RetinaNet demo
        augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=(128,), max_size=256, sample_style="choice"),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="BGR",
    ),
    total_batch_size=8,
    num_workers=2,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="efl_synth_lt_val", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=128, max_size=256)],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=2,
)
dataloader.evaluator = L(LVISEvaluator)(
    dataset_name="${..test.dataset.names}",
    output_dir="${train.output_dir}/inference/${..test.dataset.names}",
    max_dets_per_image=100,
)

optimizer = L(torch.optim.SGD)(
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),  # params.model: set by the trainer
    lr=0.02,
    momentum=0.9,
    weight_decay=1e-4,
)
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.0),
    warmup_length=50 / 450,
    warmup_method="linear",
    warmup_factor=0.001,
)

train = dict(
    output_dir="output/demo/fcos_R_18_demo_efl",
    init_checkpoint="",
    max_iter=450,
    amp=dict(enabled=False),
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period=100000, max_to_keep=100),
    eval_period=0,  # evaluate once, after the last iteration
    log_period=20,
    device="cuda" if torch.cuda.is_available() else "cpu",
    seed=42,
    # from scratch, training diverges without clipping
    clip_gradients=dict(max_norm=1.0, norm_type=2.0),
    reset_efl_statistics=False,
)
