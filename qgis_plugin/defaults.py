"""The engine's defaults for the plugin, which cannot import the engine. Generated: do not edit.

Written by ``python -m pointsam_engine.config qgis_plugin/defaults.py`` from
``pointsam_engine.config`` (SegmentConfig, TRAIN); ``tests/engine/test_config.py`` fails when they differ.
"""


SEGMENT = {
    "calibration": True,
    "calibration_iou": 0.1,
    "chip_scale": 1.0,
    "keep_overlaps": False,
    "min_area": 0.0,
    "max_hole_area": None,
    "simplify": None,
    "regularize": "none",
    "sar_db": False,
    "stretch": "2,98",
}

TRAIN = {
    "steps": 400,
    "rank": 4,
    "lr": 0.0001,
    "val_fraction": 0.2,
    "anchor_weight": 1.0,
}

CHOICES = {
    "regularize": ["none", "buildings", "ships"],
    "precision": ["auto", "fp32", "bf16", "fp16", "int8", "openvino"],
}
