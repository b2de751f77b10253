"""train_net.py with LazyConfig (.py) files: training, evaluation, --eval-only, --resume and overrides on the synthetic
FCOS config; the LVIS v1 LazyConfigs against their yacs twin; one-line messages for configs that cannot run."""
import json

import pytest
import torch
from omegaconf import OmegaConf

from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler, build_optimizer

from conftest import REPO
from efl import EFLFCOS, EFLRetinaNet, add_efl_config, lvis_frequency_groups
from efl.checks import ConfigError
from efl.engine.lazy import load_lazy_config
from test_train_net import assert_stops_with, read_results, train_net

TINY = REPO / "tests" / "configs" / "fcos_tiny.py"  # the synthetic FCOS demo, shrunk
DEMO = REPO / "configs" / "Synthetic" / "fcos_R_18_demo_efl.py"
LVIS = REPO / "configs" / "LVISv1"


def train(output_dir, *args):
    run = train_net("--config-file", TINY, *args, f"train.output_dir={output_dir}")
    assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """3 iterations of EFLFCOS on the synthetic test set, evaluated at the end."""
    out = tmp_path_factory.mktemp("lazy")
    return out, train(out)


def test_training_then_lvis_evaluation(trained):
    out, run = trained
    results = read_results(out)
    assert all(0.0 <= results[m] <= 100.0 for m in ("AP", "APr", "APc", "APf"))
    assert "copypaste: AP,AP50,AP75,APs,APm,APl,APr,APc,APf" in run.stdout + run.stderr
    metrics = [json.loads(line) for line in open(out / "metrics.json")]
    assert {"efl/gamma_rare", "efl/gamma_common", "efl/gamma_frequent"} <= set(metrics[0])
    assert {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"} <= set().union(*metrics)

    checkpoint = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["iteration"] == 2
    state = checkpoint["model"]
    assert (state["cls_loss.pos_grad"] > 0).any() and (state["cls_loss.neg_grad"] > 0).all()
    assert state["loss_normalizer"] != 300.0  # FCOS's moving average moved from its start


def test_eval_only_reproduces_the_results_of_training(trained, tmp_path):
    out, _ = trained
    train(tmp_path, "--eval-only", f"train.init_checkpoint={out / 'model_final.pth'}")
    assert read_results(tmp_path) == pytest.approx(read_results(out))


def test_resume_reproduces_the_uninterrupted_run_and_overrides_apply(trained, tmp_path):
    """Train 2 iterations, resume to 3: the run of the `trained` fixture, bit for bit (evaluation changes nothing)."""
    out, _ = trained
    no_eval = "dataloader.evaluator=null"
    train(tmp_path, "train.max_iter=2", no_eval)
    assert "max_iter: 2" in (tmp_path / "config.yaml").read_text()  # the override, in the saved config
    train(tmp_path, "--resume", no_eval)

    uninterrupted, resumed = (torch.load(d / "model_final.pth", map_location="cpu", weights_only=False) for d in (out, tmp_path))
    assert resumed["iteration"] == uninterrupted["iteration"] == 2
    assert resumed["model"].keys() == uninterrupted["model"].keys()
    for key, value in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    expected_state = uninterrupted["trainer"]["optimizer"]["state"]
    assert resumed["trainer"]["optimizer"]["state"].keys() == expected_state.keys()
    for index, state in expected_state.items():
        assert torch.equal(resumed["trainer"]["optimizer"]["state"][index]["momentum_buffer"], state["momentum_buffer"])


def test_overrides_use_lazyconfig_syntax():
    cfg = load_lazy_config(str(DEMO), ["train.max_iter=7", "model.num_classes=8", "optimizer.lr=0.5"])
    assert (cfg.train.max_iter, cfg.model.num_classes, cfg.optimizer.lr) == (7, 8, 0.5)
    assert isinstance(instantiate(LazyConfig.load(str(DEMO)).model), EFLFCOS)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--eval-only"], "--eval-only needs the weights to evaluate: add train.init_checkpoint="),
        (["train.init_checkpoint=/nowhere/model.pth"], "train.init_checkpoint file not found: /nowhere/model.pth"),
        (["dataloader.train=null"], "has no 'dataloader.train'"),
    ],
)
def test_configs_that_cannot_run_stop_with_one_line(args, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_lazy_config(str(TINY), [a for a in args if "=" in a], eval_only="--eval-only" in args)


def test_train_net_reports_a_missing_lazy_config_without_a_traceback(tmp_path):
    run = train_net("--config-file", tmp_path / "nope.py")
    assert_stops_with(run, "train_net.py: error: config file not found")


def yacs(path):
    cfg = get_cfg()
    add_efl_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def test_lvis_retinanet_lazy_config_is_its_yaml_twin():
    """configs/LVISv1/retinanet_R_50_FPN_24ep_efl.py builds what the .yaml of the same name builds."""
    lazy, cfg = LazyConfig.load(str(LVIS / "retinanet_R_50_FPN_24ep_efl.py")), yacs(LVIS / "retinanet_R_50_FPN_24ep_efl.yaml")
    ours, theirs = instantiate(lazy.model), build_model(cfg)
    assert type(ours) is type(theirs) is EFLRetinaNet
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert [p.requires_grad for p in ours.parameters()] == [p.requires_grad for p in theirs.parameters()]
    for a, b in zip(ours.anchor_generator.cell_anchors, theirs.anchor_generator.cell_anchors):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-3)  # the .yaml writes the sizes x 2^(k/3) to 4 decimals
    for name in (
        "num_classes", "head_in_features", "smooth_l1_beta", "box_reg_loss_type", "focal_loss_alpha",
        "focal_loss_gamma", "test_score_thresh", "test_topk_candidates", "test_nms_thresh", "max_detections_per_image",
        "input_format", "normalizer_momentum", "_normalizer_start",
    ):  # fmt: skip
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.anchor_matcher.thresholds == theirs.anchor_matcher.thresholds
    assert ours.anchor_matcher.labels == theirs.anchor_matcher.labels
    assert ours.box2box_transform.weights == theirs.box2box_transform.weights
    assert torch.equal(ours.frequency_groups, theirs.frequency_groups)
    assert torch.equal(ours.pixel_mean, theirs.pixel_mean) and torch.equal(ours.pixel_std, theirs.pixel_std)
    assert ours.cls_loss.extra_repr() == theirs.cls_loss.extra_repr()
    assert lazy.train.init_checkpoint == cfg.MODEL.WEIGHTS

    # optimiser and schedule
    lazy.optimizer.params.model = ours
    optimizer, expected_optimizer = instantiate(lazy.optimizer), build_optimizer(cfg, theirs)
    hyper = ("lr", "momentum", "weight_decay")
    assert [[g[k] for k in hyper] for g in optimizer.param_groups] == [
        [g[k] for k in hyper] for g in expected_optimizer.param_groups
    ]
    multiplier, expected = instantiate(lazy.lr_multiplier), build_lr_scheduler(cfg, expected_optimizer)
    assert lazy.train.max_iter == cfg.SOLVER.MAX_ITER == expected._max_iter
    for it in (0, 500, 999, 1000, 100169, 100170, 137733, 137734, 150254):
        assert multiplier(it / lazy.train.max_iter) == pytest.approx(expected._multiplier(it / expected._max_iter)), it

    # data
    loader = lazy.dataloader
    assert loader.train.dataset.names == cfg.DATASETS.TRAIN[0] and loader.test.dataset.names == cfg.DATASETS.TEST[0]
    assert loader.train.total_batch_size == cfg.SOLVER.IMS_PER_BATCH
    assert "RepeatFactor" in cfg.DATALOADER.SAMPLER_TRAIN and loader.train.sampler._target_.__name__ == cfg.DATALOADER.SAMPLER_TRAIN
    assert loader.train.sampler.repeat_factors.repeat_thresh == cfg.DATALOADER.REPEAT_THRESHOLD
    resize = loader.train.mapper.augmentations[0]
    assert tuple(resize.short_edge_length) == cfg.INPUT.MIN_SIZE_TRAIN and resize.max_size == cfg.INPUT.MAX_SIZE_TRAIN
    test_resize = loader.test.mapper.augmentations[0]
    assert (test_resize.short_edge_length, test_resize.max_size) == (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    assert loader.evaluator.max_dets_per_image == cfg.TEST.DETECTIONS_PER_IMAGE


def test_lvis_fcos_lazy_config():
    lazy = LazyConfig.load(str(LVIS / "fcos_R_50_FPN_24ep_efl.py"))
    retinanet = LazyConfig.load(str(LVIS / "retinanet_R_50_FPN_24ep_efl.py"))
    model = instantiate(lazy.model)
    assert isinstance(model, EFLFCOS) and model.num_classes == 1203
    assert (model.cls_loss.gamma_b, model.cls_loss.scale, model.cls_loss.alpha) == (2.0, 8.0, 0.25)
    assert model.loss_normalizer.item() == 300.0
    assert model.frequency_groups.tolist() == lvis_frequency_groups("lvis_v1_train", 1203)
    assert not any(p.requires_grad for p in model.backbone.bottom_up.stem.parameters())  # freeze_at 2
    assert lazy.train.init_checkpoint.endswith("MSRA/R-50.pkl")
    # the same data, optimiser, schedule and length as the RetinaNet LazyConfig (and so as the .yaml)
    for node in ("dataloader", "optimizer", "lr_multiplier"):
        assert OmegaConf.to_container(lazy[node]) == OmegaConf.to_container(retinanet[node]), node
    assert lazy.train.max_iter == retinanet.train.max_iter == 150255
