"""train_net.py with LazyConfig (.py) files: training, evaluation, --eval-only, --resume and overrides on the synthetic
FCOS config; the LVIS v1 LazyConfigs against their yacs twin; one-line messages for configs that cannot run."""
import json
import os
from argparse import Namespace

import pytest
import torch
from omegaconf import ListConfig, OmegaConf

from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler, build_optimizer

from conftest import REPO, load_train_net, stops_before_any_process, train_net
from efl import EFLFCOS, EFLRetinaNet, add_efl_config, check, lvis_frequency_groups
from efl.config import LAZY_NAMES, LazyRecipe, load, load_lazy_config
from efl.data.samplers import RepeatFactorSampler
from efl.data.train_loader import build_resumable_train_loader
from efl.engine import EFLCheckpointer, OutputDirInUseError, OutputDirLock, WeightsMismatchError, evaluate_weights, run
from efl.engine.safe_loading import UnsafeFileError
from efl.errors import ConfigError
from test_custom_dataset import own_data  # noqa: F401 (a fixture)
from test_train_net import read_results

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


def recipe(*overrides, config=TINY, eval_only=False):
    return LazyRecipe(load_lazy_config(str(config), list(overrides), eval_only=eval_only), eval_only)


def command_line(config, *overrides, eval_only=False):
    return Namespace(eval_only=eval_only, resume=False, trust_pickle=False, config_file=str(config), opts=list(overrides))


def test_eval_only_reproduces_the_results_of_training(trained, tmp_path):
    """What each process of train_net.py --eval-only runs (efl.engine.run), here in this process."""
    out, _ = trained
    overrides = [f"train.init_checkpoint={out / 'model_final.pth'}", f"train.output_dir={tmp_path}"]
    run(command_line(TINY, *overrides, eval_only=True), recipe(*overrides, eval_only=True))
    assert read_results(tmp_path) == pytest.approx(read_results(out))


def test_resume_reproduces_the_uninterrupted_run_and_overrides_apply(trained, tmp_path):
    """Train 2 iterations, resume to 3 (as each process of train_net.py and train_net.py --resume would, here in this
    process): the run of the `trained` fixture, bit for bit (evaluation changes nothing)."""
    out, _ = trained
    no_eval = "dataloader.evaluator=null"
    first = ["train.max_iter=2", no_eval, f"train.output_dir={tmp_path}"]
    run(command_line(TINY, *first), recipe(*first))
    assert "max_iter: 2" in (tmp_path / "config.yaml").read_text()  # the override, in the saved config
    resumed = command_line(TINY, no_eval, f"train.output_dir={tmp_path}")
    resumed.resume = True
    run(resumed, recipe(no_eval, f"train.output_dir={tmp_path}"))

    uninterrupted, resumed = (torch.load(d / "model_final.pth", map_location="cpu", weights_only=True) for d in (out, tmp_path))
    assert resumed["iteration"] == uninterrupted["iteration"] == 2
    assert resumed["model"].keys() == uninterrupted["model"].keys()
    for key, value in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    expected_state = uninterrupted["trainer"]["optimizer"]["state"]
    assert resumed["trainer"]["optimizer"]["state"].keys() == expected_state.keys()
    for index, state in expected_state.items():
        assert torch.equal(resumed["trainer"]["optimizer"]["state"][index]["momentum_buffer"], state["momentum_buffer"])


def test_an_efl_detector_is_given_the_training_sets_frequency_groups_unless_the_config_sets_them():
    groups = lvis_frequency_groups("efl_synth_test_train", 8)
    assert recipe().build_model(groups).frequency_groups.tolist() == groups
    assert recipe("model.frequency_groups=[2,2,2,2,2,2,2,2]").build_model(groups).frequency_groups.tolist() == [2] * 8
    assert recipe().build_model(None).frequency_groups is None


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


def test_a_missing_lazy_config_stops_in_one_line(tmp_path):
    assert "config file not found" in stops_before_any_process("--config-file", tmp_path / "nope.py")


def yacs(path):
    cfg = get_cfg()
    add_efl_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def assert_same(ours, theirs, where):
    """Equal resolved values: modules of the same structure and parameter shapes, tensors equal (anchors to 1e-3:
    the .yaml writes the sizes x 2^(k/3) to 4 decimals), other objects attribute by attribute."""
    if isinstance(ours, torch.nn.Module):
        assert str(ours) == str(theirs), where
        assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
        assert [p.requires_grad for p in ours.parameters()] == [p.requires_grad for p in theirs.parameters()], where
        ours, theirs = {k: v for k, v in vars(ours).items() if not k.startswith("_")}, {
            k: v for k, v in vars(theirs).items() if not k.startswith("_")
        }
    if isinstance(ours, torch.Tensor):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-3 if "anchor" in where else 0, msg=where)
    elif isinstance(ours, dict):
        assert ours.keys() == theirs.keys(), where
        for key in ours:
            assert_same(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(ours, (list, tuple, ListConfig)):
        assert len(ours) == len(theirs), where
        for index, (a, b) in enumerate(zip(ours, theirs)):
            assert_same(a, b, f"{where}[{index}]")
    elif hasattr(ours, "__dict__") and not isinstance(ours, type):
        assert type(ours) is type(theirs), where
        assert_same(vars(ours), vars(theirs), where)
    else:
        assert ours == theirs, where


def test_lvis_retinanet_lazy_config_is_its_yaml_twin():
    """configs/LVISv1/retinanet_R_50_FPN_24ep_efl.py builds what the .yaml of the same name builds: every argument of
    the model as the yacs config resolves it (EFLRetinaNet.from_config, and the defaults of what it leaves out), the
    optimiser, the schedule at every step and the data."""
    lazy, cfg = LazyConfig.load(str(LVIS / "retinanet_R_50_FPN_24ep_efl.py")), yacs(LVIS / "retinanet_R_50_FPN_24ep_efl.yaml")
    ours, theirs = instantiate(lazy.model), build_model(cfg)
    assert type(ours) is type(theirs) is EFLRetinaNet
    arguments = set(EFLRetinaNet.from_config(cfg)) | {"normalizer_momentum", "normalizer_start", "frequency_groups"}
    for name in sorted(arguments - {"head_in_features"}):
        assert_same(getattr(ours, name), getattr(theirs, name), name)
    assert ours.head_in_features == theirs.head_in_features
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
    # the sampler that the yacs path builds for RepeatFactorTrainingSampler (efl.data.samplers.build_epoch_sampler)
    assert cfg.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler" and cfg.SOLVER.MAX_EPOCHS == 0
    assert loader.train.sampler._target_ is RepeatFactorSampler and "max_epochs" not in lazy.train
    assert loader.train.sampler.rounding == cfg.DATALOADER.REPEAT_ROUNDING
    assert loader.train.sampler.repeat_factors.repeat_thresh == cfg.DATALOADER.REPEAT_THRESHOLD
    resize = loader.train.mapper.augmentations[0]
    assert tuple(resize.short_edge_length) == cfg.INPUT.MIN_SIZE_TRAIN and resize.max_size == cfg.INPUT.MAX_SIZE_TRAIN
    test_resize = loader.test.mapper.augmentations[0]
    assert (test_resize.short_edge_length, test_resize.max_size) == (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    assert loader.evaluator.max_dets_per_image == cfg.TEST.DETECTIONS_PER_IMAGE
    assert loader.evaluator.frequency_from == cfg.DATASETS.TRAIN[0]  # as efl.build_evaluator gives it


def test_lvis_fcos_lazy_config():
    lazy = LazyConfig.load(str(LVIS / "fcos_R_50_FPN_24ep_efl.py"))
    retinanet = LazyConfig.load(str(LVIS / "retinanet_R_50_FPN_24ep_efl.py"))
    model = instantiate(lazy.model)
    assert isinstance(model, EFLFCOS) and model.num_classes == 1203
    assert (model.cls_loss.gamma_b, model.cls_loss.scale, model.cls_loss.alpha) == (2.0, 8.0, 0.25)
    assert model.loss_normalizer.item() == 300.0
    assert model.frequency_groups is None  # given by the engine, from the training set
    assert not any(p.requires_grad for p in model.backbone.bottom_up.stem.parameters())  # freeze_at 2
    assert lazy.train.init_checkpoint.endswith("MSRA/R-50.pkl")
    # the same data, optimiser, schedule and length as the RetinaNet LazyConfig (and so as the .yaml)
    for node in ("dataloader", "optimizer", "lr_multiplier"):
        assert OmegaConf.to_container(lazy[node]) == OmegaConf.to_container(retinanet[node]), node
    assert lazy.train.max_iter == retinanet.train.max_iter == 150255


# ----- the guarantees of the yacs path, for LazyConfigs: checks before any process starts, one-line messages

EPOCHS = REPO / "tests" / "configs" / "fcos_tiny_epochs.py"


def check_lazy(config=TINY, *overrides, eval_only=False, **kwargs):
    check(recipe(*overrides, config=config, eval_only=eval_only), eval_only=eval_only, **kwargs)


def test_a_misspelled_override_stops_in_one_line_before_any_process_starts(tmp_path):
    message = stops_before_any_process("--config-file", TINY, "model.num_clases=8", f"train.output_dir={tmp_path / 'out'}")
    assert "unknown config key model.num_clases (did you mean model.num_classes" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["trian.max_iter=3"], "unknown config key trian.max_iter (did you mean train.max_iter?)"),
        (["model.backbone.bottom_up.frezee_at=2"], "did you mean model.backbone.bottom_up.freeze_at"),
        (["train.clip_gradients.max_nrom=1"], "did you mean train.clip_gradients.max_norm"),
        (["train.max_iter.x=1"], "train.max_iter is a value (3), not a group of keys"),
        (["train.max_iter=[1,"], "cannot parse the override 'train.max_iter=[1,'"),
        (["~train.seed"], "deleting a key is not supported"),
    ],
)
def test_override_mistakes_are_refused(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_lazy_config(str(TINY), overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_new_keys_are_accepted_where_the_config_takes_them():
    cfg = load_lazy_config(
        str(TINY),
        [
            "model.test_nms_thresh=0.4",  # a keyword argument of EFLFCOS (FCOS's), not in the config
            "model.backbone.bottom_up.freeze_at=1",
            "train.allow_partial_weights=true",  # this project's keys of train
            "train.ddp.bucket_cap_mb=5",  # DistributedDataParallel's keyword arguments
            "dataloader.register=[[mine,lvis,/data/mine.json,/data/images]]",
            "+anything.at_all=1",  # Hydra's way to add a key
        ],
    )
    assert cfg.model.test_nms_thresh == 0.4 and cfg.train.ddp.bucket_cap_mb == 5 and cfg.anything.at_all == 1
    assert list(cfg.dataloader.register[0]) == ["mine", "lvis", "/data/mine.json", "/data/images"]


@pytest.mark.parametrize(
    "text,message",
    [
        ("train = dict(max_iter=3\n", "SyntaxError: '(' was never closed ({path}, line 1)"),
        ("x = 1\ntrain = dict(max_iter=foo)\n", "NameError: name 'foo' is not defined ({path}, line 2)"),
        ("from .nowhere import train\n", "ImportError: "),
    ],
)
def test_a_config_file_that_does_not_run_is_named_with_its_line(tmp_path, text, message):
    path = tmp_path / "mine.py"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_lazy_config(str(path), [])
    assert str(error.value).startswith(f"cannot load config file {path}: {message.format(path=path)}")


@pytest.mark.parametrize(
    "overrides,kwargs,message",
    [
        (["model.num_classes=5"], {},
         "model.num_classes is 5 but dataset 'efl_synth_test_train' has 8 categories: set model.num_classes=8"),
        ([], {"num_processes": 3}, "dataloader.train.total_batch_size 4 cannot be split evenly over 3 processes"),
        (["train.max_iter=0"], {}, "train.max_iter must be at least 1 to train, got 0"),
        (["dataloader.train.dataset.names=lvis_v2_train"], {},
         "Dataset 'lvis_v2_train' is not registered. Built-in LVIS v1 names"),
        (["train.max_epochs=2", "train.epoch_steps=[3]"], {}, "train.epoch_steps must increase within (0, "),
        (["train.max_epochs=2", "train.epoch_steps=[1]"], {}, "train.epoch_steps needs lr_multiplier to be a Multi"),
        (["train.max_epochs=2", "train.warmup_epochs=1"], {}, "train.warmup_epochs needs lr_multiplier to be a Warm"),
        (["train.max_epochs=2", "+dataloader.train.sampler._target_=detectron2.data.samplers.InferenceSampler"], {},
         "train.max_epochs needs a sampler with epochs"),
    ],
)  # fmt: skip
def test_settings_that_cannot_run_stop_before_any_process_starts(overrides, kwargs, message):
    with pytest.raises(ConfigError) as error:
        check_lazy(TINY, *overrides, **kwargs)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["train.max_iter=10"], "train.max_iter is given on the command line too"),
        (["lr_multiplier.scheduler.milestones=[1]"], "lr_multiplier.scheduler.milestones is given on the command line"),
        (["train.epoch_steps=[0.02,0.05]"], "lr_multiplier.scheduler.values has 2 values, so train.epoch_steps needs 1"),
        (["dataloader.train.sampler.rounding=floor"], "dataloader.train.sampler.rounding must be one of stochastic, ceil"),
    ],
)
def test_epoch_settings_that_cannot_run_stop_before_any_process_starts(overrides, message):
    with pytest.raises(ConfigError) as error:
        check_lazy(EPOCHS, *overrides)
    assert message in str(error.value)


def test_a_run_on_a_locked_output_dir_is_refused(tmp_path):
    """train_net.py takes the lock (efl.engine.launch_run) before it starts any process."""
    from efl.engine import launch_run

    args = load_train_net().argument_parser().parse_args(["--config-file", str(TINY), f"train.output_dir={tmp_path}"])
    with OutputDirLock(str(tmp_path), LAZY_NAMES.output_dir):
        with pytest.raises(OutputDirInUseError) as error:
            launch_run(args, load(str(TINY), args.opts))
    assert f"train.output_dir {tmp_path} is in use by another run (pid {os.getpid()} on host" in str(error.value)
    assert not (tmp_path / "metrics.json").exists()


@pytest.fixture(scope="module")
def five_class_weights(tmp_path_factory):
    """Weights of the tiny EFLFCOS with 5 classes (the config's datasets have 8)."""
    cfg = load_lazy_config(str(TINY), ["model.num_classes=5"])
    path = tmp_path_factory.mktemp("weights") / "five.pth"
    torch.save({"model": instantiate(cfg.model).state_dict()}, path)
    return path


def test_eval_only_refuses_weights_that_do_not_fit(five_class_weights, tmp_path):
    """Where each process of train_net.py --eval-only loads the weights (its command line prints the message as
    one line, as test_train_net.py's corrupt weights show)."""
    overrides = [f"train.init_checkpoint={five_class_weights}", f"train.output_dir={tmp_path}"]
    check_lazy(TINY, *overrides, eval_only=True)  # present: the fit is checked where they load
    with pytest.raises(WeightsMismatchError) as error:
        evaluate_weights(recipe(*overrides, eval_only=True), resume=False)
    for fragment in (
        "do not fit the model", "head.cls_score.weight (5, 64, 3, 3) in the weights, (8, 64, 3, 3) in the model",
        "(model._target_, model.num_classes, ...)", "set train.allow_partial_weights=True to load what fits",
    ):  # fmt: skip
        assert fragment in str(error.value)
    assert not (tmp_path / "inference").exists()
    evaluate_weights(recipe(*overrides, "train.allow_partial_weights=True", eval_only=True), resume=False)


class Unpicklable:
    """Not a weight: loading a file holding it needs full unpickling."""


def test_weights_that_need_full_unpickling_load_only_with_trust_pickle(five_class_weights, tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({**torch.load(five_class_weights, weights_only=True), "extra": Unpicklable()}, path)
    model = instantiate(load_lazy_config(str(TINY)).model)
    with pytest.raises(UnsafeFileError, match="loading it would run code from the file.*--trust-pickle"):
        EFLCheckpointer(model, allow_partial=True, names=LAZY_NAMES).load(str(path))
    EFLCheckpointer(model, allow_partial=True, trust_pickle=True, names=LAZY_NAMES).load(str(path))


def test_own_dataset_registered_in_the_config_trains_in_two_processes_and_evaluates(own_data, tmp_path):
    """dataloader.register: registered before the checks and in each worker process, which train and evaluate."""
    files, root = own_data
    register = f"[[mine_train,lvis,{files['train']},{root}],[mine_val,lvis,{files['val']},{root}]]"
    run = train_net(
        "--num-gpus", "2", "--config-file", TINY, f"dataloader.register={register}",
        "dataloader.train.dataset.names=mine_train", "dataloader.test.dataset.names=mine_val",
        "dataloader.evaluator.frequency_from=mine_train",
        "train.max_iter=2", f"train.output_dir={tmp_path}",
        env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    with open(tmp_path / "inference" / "mine_val" / "results.json") as f:
        results = json.load(f)["bbox"]
    assert all(0.0 <= results[m] <= 100.0 for m in ("AP", "APr", "APc", "APf")), results
    metrics = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    assert {"efl/gamma_rare", "efl/gamma_common", "efl/gamma_frequent"} <= set(metrics[0])


def test_a_mistake_in_an_own_dataset_is_found_before_any_process_starts(own_data, tmp_path):
    files, root = own_data
    bad = tmp_path / "bad.json"
    data = json.loads(files["train"].read_text())
    data["annotations"][3]["category_id"] = 7777
    bad.write_text(json.dumps(data))
    message = stops_before_any_process(
        "--config-file", TINY, f"dataloader.register=[[mine_bad,lvis,{bad},{root}]]",
        "dataloader.train.dataset.names=mine_bad", f"train.output_dir={tmp_path / 'out'}",
    )  # fmt: skip
    assert f"{bad}: annotations[3]" in message and "has category_id 7777, which is not in 'categories'" in message


def test_the_training_loader_checks_the_annotations_classes():
    """As on the yacs path: the loader refuses a class outside [0, C) of the model, naming the image and the
    setting as a LazyConfig writes it."""
    loader, _ = build_resumable_train_loader(recipe().train_loader(), 1, LAZY_NAMES)
    message = r"Training image '.+' has annotations of classes \[.*\], outside \[0, 1\).*\(model.num_classes is 1\)"
    with pytest.raises(ValueError, match=message):
        for _ in zip(loader, range(20)):  # until the first image with a class other than 0
            pass
