"""PointSAM engine: points over a GeoTIFF become instance polygons and boxes with SAM.

Public names are imported lazily, so ``import pointsam_engine`` and ``pointsam --help`` stay fast
and torch is loaded only when a model is.
"""

__version__ = "0.1.0"

__all__ = ["segment", "SegmentConfig", "SegmentResult", "load_model", "PointSamError", "__version__"]


def __getattr__(name):
    if name in ("segment", "SegmentResult"):
        from . import pipeline
        return getattr(pipeline, name)
    if name == "SegmentConfig":
        from .config import SegmentConfig
        return SegmentConfig
    if name == "load_model":
        from .sam.model import load_model
        return load_model
    if name == "PointSamError":
        from .errors import PointSamError
        return PointSamError
    raise AttributeError(f"module 'pointsam_engine' has no attribute {name!r}")
