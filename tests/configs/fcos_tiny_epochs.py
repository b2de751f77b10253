# fcos_tiny.py counted in epochs over the list enlarged by the authors' (ceil) repeat-factor rounding, as the
# official recipe counts them: with threshold 0.3 the test set's 120 training images enlarge to 189, an epoch is
# 48 iterations at batch 4, so 0.17 epochs are 8 iterations, with the learning rate divided by 10 after 0.1
# epochs (iteration 4) and a warm-up of 0.03 epochs (1 iteration). A checkpoint every 2 iterations, no evaluation.
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler

from efl.data.samplers import RepeatFactorSampler

from .fcos_tiny import dataloader, model, optimizer, train

dataloader.train.sampler = L(RepeatFactorSampler)(
    repeat_factors=L(RepeatFactorSampler.repeat_factors_from_category_frequency)(
        dataset_dicts="${...dataset}", repeat_thresh=0.3
    ),
    rounding="ceil",
)
dataloader.evaluator = None

# the iterations (milestones, number of updates, warm-up length, train.max_iter) are set from the epochs
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=None, num_updates=None),
    warmup_length=None,
    warmup_factor=0.001,
)
train.max_iter = None
train.max_epochs = 0.17
train.epoch_steps = [0.1]
train.warmup_epochs = 0.03
train.checkpointer.period = 2
