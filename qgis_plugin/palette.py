"""The plugin's colours, in one place: the outlines of what a click is still shaping (the preview, the box prompt)
must never look like a result already kept (the dock's layers, the digitized objects), so each is chosen against
the others here. Click markers keep SAM's convention (green adds, red removes): they are points, not outlines.

Colours are ``(r, g, b)`` tuples; :func:`rgba` writes one as QGIS symbol properties want it (``"r,g,b,a"``),
:func:`qcolor` as a QColor for rubber bands.
"""

from __future__ import annotations

from typing import Dict, Tuple

from qgis.PyQt.QtGui import QColor

RGB = Tuple[int, int, int]

# results: layers a run adds (gui/results.py) and the objects digitizing keeps (layers.style_digitized)
INSTANCES: RGB = (255, 200, 0)  # yellow
BOXES: RGB = (0, 220, 255)  # cyan
SKIPPED: RGB = (230, 0, 0)  # red crosses
DIGITIZED: RGB = (230, 0, 180)  # magenta
RESULTS: Dict[str, RGB] = {"instances": INSTANCES, "boxes": BOXES, "skipped": SKIPPED, "digitized": DIGITIZED}

# the object in progress (gui/map_tool.py)
PREVIEW: RGB = (140, 60, 255)  # violet: far from every result colour, and from the rust and grey of roofs
BOX_PROMPT: RGB = PREVIEW  # the box a drag draws is part of the object in progress
POSITIVE: RGB = (30, 200, 60)
NEGATIVE: RGB = (230, 40, 40)


def rgba(colour: RGB, alpha: int = 255) -> str:
    """``colour`` as a QGIS symbol property: ``"r,g,b,a"``."""
    return ",".join(str(v) for v in (*colour, alpha))


def qcolor(colour: RGB, alpha: int = 255) -> QColor:
    """``colour`` as a QColor."""
    return QColor(*colour, alpha)
