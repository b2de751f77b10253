# The synthetic FCOS demo (configs/Synthetic/fcos_R_18_demo_efl.py) shrunk for tests, as tests/conftest.py's
# SMALL_OPTS shrink the yacs demo: the 8-class test set, 96 px images, a 64-channel FPN with one conv per head
# branch, batch 4, 3 iterations on the CPU. Deterministic, so that a resumed run can be compared with an
# uninterrupted one: a constant learning rate (no schedule that depends on max_iter) and no random flip.
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from fvcore.common.param_scheduler import LinearParamScheduler

from ...configs.Synthetic.fcos_R_18_demo_efl import dataloader, model, optimizer, train

model.num_classes = 8
model.backbone.out_channels = 64
model.backbone.top_block.in_channels = 64
model.head.input_shape = [ShapeSpec(channels=64)] * 5
model.head.conv_dims = [64]
model.max_detections_per_image = 50

dataloader.train.dataset.names = "efl_synth_test_train"
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(96,), max_size=96, sample_style="choice")
]
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 0
dataloader.test.dataset.names = "efl_synth_test_val"
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=96, max_size=96)]
dataloader.test.num_workers = 0
dataloader.evaluator.max_dets_per_image = 50

lr_multiplier = L(LinearParamScheduler)(start_value=1.0, end_value=1.0)  # constant; ConstantParamScheduler refuses the end (1.0)

train.max_iter = 3
train.device = "cpu"
