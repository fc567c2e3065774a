"""One declaration of every numeric and choice option: its type, range, unit and example.

The CLI's click options (:meth:`Number.click_type`), the HTTP API's pydantic fields (:meth:`Number.field`)
and the Python API (:func:`check_numbers`, called by :class:`~pointsam_engine.config.SegmentConfig` and
``pointsam train``) all read these, so no entry point accepts a value another refuses. The saved OpenAPI
schema (``docs/openapi.json``) carries the same ranges for clients such as the QGIS plugin's Processing
algorithms, which reach the engine through the API and so get its refusals in any case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Sequence

from .errors import OptionError


@dataclass(frozen=True)
class Number:
    """A numeric option: ``name`` as in Python and the API (``min_area``), ``--min-area`` on the command line."""

    name: str
    kind: type  # int or float
    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None
    unit: str = ""
    example: str = "1"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def range_text(self) -> str:
        parts = [f">= {_num(self.ge)}" if self.ge is not None else "", f"> {_num(self.gt)}" if self.gt is not None else "",
                 f"<= {_num(self.le)}" if self.le is not None else "", f"< {_num(self.lt)}" if self.lt is not None else ""]
        text = " and ".join(p for p in parts if p)
        kind = "a whole number" if self.kind is int else "a number"
        return f"{kind} {text}".strip() + (f" ({self.unit})" if self.unit else "")

    def check(self, value: Any, flag: Optional[str] = None) -> Any:
        """``value`` as ``kind`` if it is in range; else :class:`OptionError` naming the range and an example."""
        flag = flag or self.flag
        fix = f"give {self.range_text()}, e.g. {flag} {self.example}"
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value) if self.kind is float else _whole(value)
        except (TypeError, ValueError, OverflowError):
            raise OptionError(f"{flag} {value!r} is not {'a whole number' if self.kind is int else 'a number'}; "
                              f"{fix}") from None
        if self.kind is float and not math.isfinite(number):
            raise OptionError(f"{flag} {value} is not a finite number; {fix}")
        if ((self.ge is not None and number < self.ge) or (self.gt is not None and number <= self.gt)
                or (self.le is not None and number > self.le) or (self.lt is not None and number >= self.lt)):
            raise OptionError(f"{flag} {_num(number)} is out of range; {fix}")
        return number

    def field(self, default: Any = ..., **extra) -> Any:
        """The pydantic ``Field`` of this option (the same range; infinities and NaN refused)."""
        from pydantic import Field

        bounds = {k: getattr(self, k) for k in ("ge", "gt", "le", "lt") if getattr(self, k) is not None}
        if self.kind is float:
            extra.setdefault("allow_inf_nan", False)
        return Field(default, **bounds, **extra)

    def click_type(self):
        """A click parameter type that refuses, in the engine's one line, what :meth:`check` refuses."""
        return _click_type(self.kind.__name__, self.check)


@dataclass(frozen=True)
class Choice:
    """An option taking one of a few words (case-sensitive)."""

    name: str
    values: Sequence[str]
    help: str = ""  # what each value does: the CLI's help and the API's description

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any, flag: Optional[str] = None) -> str:
        if value not in self.values:
            raise OptionError(f"{flag or self.flag} {value!r} is not one of {', '.join(self.values)}; "
                              f"choose one of them, e.g. {flag or self.flag} {self.values[0]}")
        return value

    def click_type(self):
        return _click_type("choice", self.check, self.values)


def _whole(value: Any) -> int:
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError
        return int(value)
    return int(str(value).strip())


def _num(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


NUMBERS: Dict[str, Number] = {n.name: n for n in (
    # segment (CLI, API jobs and clicks, Python)
    Number("chip_scale", float, ge=0.25, le=64, example="2"),
    Number("calibration_iou", float, ge=0, le=1, example="0.1"),
    Number("min_area", float, ge=0, unit="m²", example="10"),
    Number("max_hole_area", float, ge=0, unit="m²", example="25"),
    Number("simplify", float, ge=0, unit="metres", example="0.5"),
    Number("nodata", float, example="0"),
    Number("cache_mb", int, ge=1, le=1_000_000, unit="MB", example="512"),
    Number("decoder_batch", int, ge=1, le=1024, example="8"),
    Number("max_parallel", int, ge=1, le=64, example="1"),
    # batch (CLI, API jobs)
    Number("workers", int, ge=1, le=4096, example="2"),
    # train (CLI, API jobs)
    Number("steps", int, ge=1, le=1_000_000, example="400"),
    Number("lr", float, gt=0, le=1, example="1e-4"),
    Number("seed", int, ge=0, le=2**31 - 1, example="0"),
    Number("rank", int, ge=1, le=256, example="4"),
    Number("val_fraction", float, ge=0, lt=1, example="0.2"),
    Number("val_every", int, ge=1, le=1_000_000, example="50"),
    Number("checkpoint_every", int, ge=1, le=1_000_000, example="50"),
    Number("background", int, ge=0, le=64, example="1"),
    Number("prototype_weight", float, ge=0, le=100, example="0.1"),
    Number("anchor_weight", float, ge=0, le=100, example="1"),
    Number("devices", int, ge=1, le=1024, example="1"),
)}

CHOICES: Dict[str, Choice] = {c.name: c for c in (
    Choice("accelerator", ("auto", "cpu", "gpu", "cuda", "mps")),
    Choice("precision", ("32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "16-true", "bf16-true",
                         "64-true", "64")),
    Choice("model_type", ("vit_b", "vit_l", "vit_h", "hiera_t", "hiera_s", "hiera_b+", "hiera_l")),  # SAM, SAM 2.1
    # segment and serve: the image encoder's arithmetic (pointsam_engine.sam.precision); flag --precision
    Choice("encoder_precision", ("auto", "fp32", "bf16", "fp16", "int8", "openvino")),
    # segment: how outlines are drawn (pointsam_engine.regularize)
    Choice("regularize", ("none", "buildings", "ships"),
           help="buildings: footprints with right angles where they fit the mask, along the walls the image "
                "shows; ships: hulls smoothed inside their box; none: traced outlines."),
)}

SEGMENT_NUMBERS = ("chip_scale", "calibration_iou", "min_area", "max_hole_area", "simplify", "nodata", "cache_mb",
                   "decoder_batch")
TRAIN_NUMBERS = ("steps", "lr", "seed", "rank", "val_fraction", "val_every", "checkpoint_every", "background",
                 "prototype_weight", "anchor_weight", "devices", "chip_scale", "nodata")


def check_numbers(values: Dict[str, Any], names: Iterable[str]) -> None:
    """Check each named option of ``values`` that is not None against its declaration."""
    for name in names:
        if values.get(name) is not None:
            NUMBERS[name].check(values[name])


def check_device(device: str, flag: str = "--device") -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    import re

    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d{1,2})?", device):
        raise OptionError(f"{flag} {device!r} is not a device; give auto, cpu, cuda, cuda:1 or mps")
    return device


def check_crs(value: Optional[str], flag: str) -> Optional[str]:
    """Refuse, before any work, a CRS pyproj does not know (``EPSG:999999``)."""
    if value is None:
        return None
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        CRS.from_user_input(value)
    except (CRSError, TypeError, ValueError):
        raise OptionError(f"{flag} {value!r} is not a CRS pyproj knows; give one like EPSG:32633") from None
    return value


def _click_type(type_name: str, check, choices: Optional[Sequence[str]] = None):
    """A click parameter type that refuses, with the engine's one line, what ``check(value, flag)`` refuses.
    Built on demand, so importing this module does not import click (the API does not need it)."""
    import click

    class Declared(click.ParamType):
        name = type_name

        def convert(self, value, param, ctx):
            return value if value is None else check(value, param.opts[-1] if param else None)

        def get_metavar(self, param, ctx=None):
            return "[" + "|".join(choices) + "]" if choices else type_name.upper()

    return Declared()
