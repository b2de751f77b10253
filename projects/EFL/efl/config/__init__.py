"""
The config front-ends: yacs (``.yaml``, :mod:`efl.config.yacs`) and LazyConfig (``.py``, :mod:`efl.config.lazy`).
Each turns its config into the engine's :class:`~efl.engine.Recipe` and words its messages in its own key names;
the checks before a run (:mod:`efl.config.checks`) and the run itself are the same for both.
"""
from typing import Sequence, Union

from omegaconf import DictConfig

from detectron2.config import CfgNode

from ..data import register_datasets
from .checks import check
from .defaults import add_efl_config
from .lazy import LazyRecipe, load_lazy_config
from .names import LAZY_NAMES, YACS_NAMES
from .yacs import YacsRecipe, build_evaluator, load_config

__all__ = [
    "LAZY_NAMES",
    "YACS_NAMES",
    "LazyRecipe",
    "YacsRecipe",
    "add_efl_config",
    "build_evaluator",
    "check",
    "load",
    "load_config",
    "load_lazy_config",
    "recipe_of",
]


def recipe_of(cfg: Union[CfgNode, DictConfig], eval_only: bool = False, num_processes: int = 1):
    """The recipe of a loaded config of either system (a yacs CfgNode or a LazyConfig)."""
    if isinstance(cfg, CfgNode):
        return YacsRecipe(cfg, num_processes)
    return LazyRecipe(cfg, eval_only)


def load(config_file: str, opts: Sequence[str] = (), eval_only: bool = False, num_processes: int = 1):
    """
    The recipe of ``config_file`` with the overrides ``opts`` applied (a ``.py`` file is a LazyConfig, whose
    overrides are ``key=value``; any other a yacs config, ``KEY VALUE``), with the datasets it registers registered
    in this process.

    Raises:
        ConfigError: with a one-line message, for any mistake in the file or the overrides.
    """
    if config_file.endswith(".py"):
        recipe = recipe_of(load_lazy_config(config_file, opts, eval_only=eval_only), eval_only)
    else:
        recipe = recipe_of(load_config(config_file, opts), num_processes=num_processes)
    register_datasets(recipe.settings.register, recipe.settings.names.register)
    return recipe
