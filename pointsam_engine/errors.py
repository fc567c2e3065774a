"""Errors the engine raises on purpose.

Every message is one line that names the problem and the fix. ``PointSamError`` is the root;
subclasses also derive from the matching builtin so callers can catch either (rasterio style).
The CLI turns any ``PointSamError`` into ``error: <message>`` on stderr and exit code 2.
"""

from __future__ import annotations


class PointSamError(Exception):
    """Root of every error the engine raises on purpose."""


class RasterError(PointSamError, OSError):
    """The raster is missing, unreadable or unusable (no CRS, bad band index)."""


class PointsError(PointSamError, ValueError):
    """The point layer is missing, empty, not points, or has no usable point."""


class ModelError(PointSamError, ValueError):
    """The checkpoint is missing, not a SAM checkpoint, or does not match ``--model-type``."""


class OutputError(PointSamError, OSError):
    """The output cannot be written (exists without overwrite, unwritable folder)."""


class OptionError(PointSamError, ValueError):
    """An option value is malformed."""


class Cancelled(PointSamError):
    """The caller asked the run to stop; nothing was written."""
