"""LVIS evaluation as this project runs it: on numpy >= 1.24, with results.json, for sets without frequency groups."""
import contextlib
import json
import os
from typing import Iterator, Optional

import numpy as np

from detectron2.evaluation import LVISEvaluator as _D2LVISEvaluator
from detectron2.utils import comm

from .data.frequency import FREQUENCY_GROUPS, class_image_count, frequency_group_of
from .errors import ConfigError

__all__ = ["LVISEvaluator", "numpy_float_alias"]


@contextlib.contextmanager
def numpy_float_alias() -> Iterator[None]:
    """
    Provide ``np.float`` (removed in numpy 1.24) for the duration of the block.

    lvis 0.5.3, the official LVIS API and its last release, still calls ``np.float`` in
    ``LVISEval.accumulate``. The alias lives only while an evaluation runs, so the rest of the program keeps
    numpy's real namespace.
    """
    if hasattr(np, "float"):
        yield
        return
    np.float = float
    try:
        yield
    finally:
        del np.float


class LVISEvaluator(_D2LVISEvaluator):
    """
    detectron2's LVISEvaluator, runnable on numpy >= 1.24, which also writes its metrics to
    ``<output_dir>/results.json`` for tools that compare runs. Categories of the annotation file without LVIS's
    ``frequency`` (your own data) get it from the training image counts of dataset ``frequency_from``.
    """

    def __init__(self, dataset_name: str, *args, frequency_from: Optional[str] = None, **kwargs):
        super().__init__(dataset_name, *args, **kwargs)
        categories = self._lvis_api.cats
        if all("frequency" in c for c in categories.values()):
            return
        counts = class_image_count(frequency_from) if frequency_from else None
        if counts is None:
            raise ConfigError(
                f"the categories of {self._metadata.json_file} have no 'frequency', which LVIS evaluation needs for "
                "APr/APc/APf, and there is no training set to count images in: add 'frequency' ('r', 'c' or 'f') "
                "to each category"
            )
        for c in counts:
            categories[c["id"]].setdefault("frequency", FREQUENCY_GROUPS[frequency_group_of(c["image_count"])][0])

    def evaluate(self):
        with numpy_float_alias():
            results = super().evaluate()
        if results and self._output_dir and comm.is_main_process():
            with open(os.path.join(self._output_dir, "results.json"), "w") as f:
                json.dump(results, f, indent=2)
        return results
