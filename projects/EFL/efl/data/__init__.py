"""
Datasets of the EFL project. Importing this package registers the synthetic long-tailed LVIS sets
(nothing is generated until a dataset is first loaded):

- ``efl_synth_lt_train`` / ``efl_synth_lt_val``: DEMO_SPEC, 18 classes in 6 look-alike families, 2000 / 500 images.
- ``efl_synth_test_train`` / ``efl_synth_test_val``: TEST_SPEC, 8 classes, for fast tests.
"""
from .frequency import FREQUENCY_GROUPS, class_image_count, frequency_group_of, lvis_frequency_groups
from .registration import (
    DATASET_FORMATS,
    check_registered_dataset,
    class_names,
    naming_malformed_dataset_files,
    register_dataset,
    register_datasets,
    registered_source,
)
from .synthetic_lvis import (
    CLASS_NAMES,
    DEMO_SPEC,
    GENERATOR_VERSION,
    TEST_SPEC,
    SyntheticLVISSpec,
    class_colour,
    ensure_generated,
    ensure_synthetic_lvis,
    family_image_counts,
    frequency_group,
    generate_synthetic_lvis,
    look_alike_base,
    register_synthetic_lvis,
    synthetic_root,
    synthetic_spec_of,
)

__all__ = [
    "CLASS_NAMES",
    "DATASET_FORMATS",
    "FREQUENCY_GROUPS",
    "DEMO_SPEC",
    "GENERATOR_VERSION",
    "TEST_SPEC",
    "SyntheticLVISSpec",
    "check_registered_dataset",
    "class_colour",
    "class_names",
    "class_image_count",
    "ensure_generated",
    "ensure_synthetic_lvis",
    "family_image_counts",
    "frequency_group",
    "frequency_group_of",
    "generate_synthetic_lvis",
    "look_alike_base",
    "lvis_frequency_groups",
    "naming_malformed_dataset_files",
    "register_dataset",
    "register_datasets",
    "register_synthetic_lvis",
    "registered_source",
    "synthetic_root",
    "synthetic_spec_of",
]

register_synthetic_lvis("efl_synth_lt", DEMO_SPEC)
register_synthetic_lvis("efl_synth_test", TEST_SPEC)
