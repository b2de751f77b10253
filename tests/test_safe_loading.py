"""A crafted file that would run code when unpickled is refused everywhere, unless --trust-pickle says otherwise."""
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch

from detectron2.modeling import build_model

import convert_released_checkpoint
import plot_efl_stats
from conftest import small_cfg, small_recipe
from efl.engine import EFLCheckpointer, evaluate_weights
from efl.engine.safe_loading import UnreadableFileError, UnsafeFileError, check_pickle_file, load_torch_file


class CreatesMarker:
    """Unpickling it creates the file ``path``: the harmless stand-in for any code an attacker would run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "MARKER"


def hostile(path, marker, fmt):
    """A checkpoint-looking file (weights under "model") with a payload beside them, in format ``fmt``."""
    if fmt == "pkl":
        with open(path, "wb") as f:
            pickle.dump({"model": {"w": np.zeros(2)}, "__author__": "x", "payload": CreatesMarker(marker)}, f)
    else:
        torch.save(
            {"model": {"w": torch.zeros(2)}, "payload": CreatesMarker(marker)},
            path,
            _use_new_zipfile_serialization=fmt == "zip",
        )
    return path


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_load_torch_file_refuses_a_payload_and_names_it(tmp_path, marker, fmt):
    path = hostile(tmp_path / "evil.pth", marker, fmt)
    with pytest.raises(UnsafeFileError, match=r"io\.open.*--trust-pickle"):
        load_torch_file(str(path))
    assert not marker.exists()
    load_torch_file(str(path), trust_pickle=True)
    assert marker.exists()  # the opt-in really unpickles: the test file is as hostile as it claims


def test_pickle_check_refuses_a_payload_and_passes_model_zoo_pickles(tmp_path, marker):
    path = hostile(tmp_path / "evil.pkl", marker, "pkl")
    with pytest.raises(UnsafeFileError, match=r"io\.open"):
        check_pickle_file(str(path))
    assert not marker.exists()
    # detectron2's model-zoo files: dicts of numpy arrays, written with any pickle protocol
    weights = {"model": OrderedDict(w=np.ones((2, 3), np.float32), n=np.int64(3)), "__author__": "zoo", "matching_heuristics": True}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        (tmp_path / "zoo.pkl").write_bytes(pickle.dumps(weights, protocol=protocol))
        check_pickle_file(str(tmp_path / "zoo.pkl"))
    (tmp_path / "zoo.pkl").write_bytes(pickle.dumps(weights)[:-20])
    with pytest.raises(UnreadableFileError, match="truncated"):
        check_pickle_file(str(tmp_path / "zoo.pkl"))


@pytest.mark.parametrize("fmt", ["zip", "pkl"])
def test_checkpointer_refuses_a_payload(tmp_path, marker, fmt):
    path = hostile(tmp_path / f"evil.{'pkl' if fmt == 'pkl' else 'pth'}", marker, fmt)
    with pytest.raises(UnsafeFileError):
        EFLCheckpointer(build_model(small_cfg())).load(str(path))
    assert not marker.exists()


def test_checkpointer_loads_an_imagenet_style_pkl_partially(tmp_path):
    """A backbone-only .pkl in detectron2's converted-torchvision layout loads (partially, as in detectron2)."""
    model = build_model(small_cfg())
    backbone = {k[len("backbone.bottom_up."):]: v.numpy() for k, v in model.state_dict().items() if k.startswith("backbone.bottom_up.")}
    backbone = {k: np.full_like(v, 0.5) for k, v in backbone.items()}
    with open(tmp_path / "R-18.pkl", "wb") as f:
        pickle.dump({"model": backbone, "__author__": "torchvision", "matching_heuristics": True}, f)
    EFLCheckpointer(model).load(str(tmp_path / "R-18.pkl"))
    assert torch.all(model.backbone.bottom_up.stem.conv1.weight == 0.5)


def test_tools_refuse_a_payload(tmp_path, marker):
    path = hostile(tmp_path / "evil.pth", marker, "zip")
    for tool, extra in (
        (convert_released_checkpoint, [str(tmp_path / "out.pth")]),
        (plot_efl_stats, ["--dataset", "efl_synth_test_train"]),
    ):
        with pytest.raises(SystemExit, match=r"^\w+\.py: error: .*io\.open.*--trust-pickle"):
            tool.main([str(path), *extra])
    assert not marker.exists()


def test_eval_only_refuses_a_payload(tmp_path, marker):
    """Where each process of train_net.py --eval-only loads the weights (its command line turns the error into one
    line: test_train_net.py's corrupt weights)."""
    path = hostile(tmp_path / "evil.pth", marker, "zip")
    recipe = small_recipe("MODEL.WEIGHTS", path, "OUTPUT_DIR", tmp_path / "out")
    with pytest.raises(UnsafeFileError, match=r"io\.open.*--trust-pickle"):
        evaluate_weights(recipe, resume=False)
    assert not marker.exists() and not (tmp_path / "out" / "inference").exists()
