"""What the dock and the Processing algorithms say to the analyst, in their own words (no qgis imports here).

The engine's one-line messages name its command-line options (``--bands``, ``--min-area``, ``--overwrite``);
:func:`in_plugin_terms` names the field of the dock (and of the algorithm dialogs, which use the same
labels) instead. :func:`parse_bands` reads the Bands field, :func:`stage_text` says what a job is doing,
and :func:`skipped_summary` counts the clicks the engine skipped, per reason.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Dict, Iterable, List, Optional

from .errors import PluginError

# the engine's option -> the field where the analyst sets it (the same label in the dock and in Processing)
FIELDS = {"--bands": "Bands", "--min-area": "Minimum area (m²)", "--max-hole-area": "Maximum hole area (m²)",
          "--simplify": "Simplify (m)", "--instance-field": "Instance field", "--label-field": "Label field",
          "--class-field": "Class field", "--model": "Model", "--adapter": "Adapter", "--sar-db": "SAR: stretch in dB",
          "--raster": "Raster", "--rasters": "Rasters", "--points": "Points", "--output": "Output", "-o": "Output",
          "--no-calibration": "Negative prompt calibration"}
# whole phrases first: options the dock has no field for, and the confirmation that stands for --overwrite
PHRASES = ((re.compile(r"pass --overwrite to replace (it|them)"), r"confirm replacing \1 when PointSAM asks"),
           (re.compile(r"pass --assume-crs \(e\.g\. ([^)]*)\) to say which it is"),
            r"assign one to the file (Processing: Assign projection, e.g. \1)"),
           (re.compile(r"choose one with --layer"), "export the layer you mean to its own file"),
           (re.compile(r"choose another -o\b"), "choose another Output"))
# what each --regularize value draws, in the plugin's words (the dock's Outlines list, the algorithms' parameter)
OUTLINES = {"none": "traced (none)", "buildings": "buildings: right angles where they fit", "ships": "ships: smooth hulls"}
VERBS = {"pass": "set", "use": "set", "give": "set", "drop": "clear"}
OPTION = re.compile(r"(?:\b(pass|use|give|drop) )?(?<![\w-])(--?[a-z][a-z-]*)(?: (PATH|FILE)\b)?")
STAGES = {"queued": "waiting for the engine", "starting": "starting the job", "reading": "reading the raster and points",
          "vectorizing": "tracing polygons", "writing": "writing the GeoPackage", "done": "done"}
CHIP = re.compile(r"^chip (\d+)/(\d+)$")
BANDS_HELP = "Bands: give band numbers separated by commas, e.g. 3,2,1 (or one band, e.g. 1)"


def in_plugin_terms(message: str, copies: Optional[Dict[str, str]] = None) -> str:
    """The engine's ``message`` with its command-line options named as the fields where the analyst sets them,
    and the temporary copies the plugin wrote of the analyst's layers (``copies``: path -> layer name) named
    as those layers.

    Text in backquotes (a command to run) is kept as it is; options without a field stay as they are.
    """
    parts = message.split("`")
    for i in range(0, len(parts), 2):  # even parts lie outside backquotes
        text = parts[i]
        for pattern, replacement in PHRASES:
            text = pattern.sub(replacement, text)
        text = OPTION.sub(_field_for, text)
        for path, name in (copies or {}).items():  # last: a layer's name is the analyst's text, never rewritten
            text = text.replace(path, f"'{name}'")
        parts[i] = text
    return "`".join(parts)


def _field_for(match: "re.Match") -> str:
    verb, option, _placeholder = match.groups()
    if option not in FIELDS:
        return match.group(0)
    field = FIELDS[option]
    return f"{VERBS[verb]} {field}" if verb else field


def parse_bands(text: str) -> List[int]:
    """The Bands field as 1-based band numbers (empty: none given); one line naming the field when it is not."""
    text = text.strip()
    if not text:
        return []
    try:
        bands = [int(part) for part in text.replace(" ", "").split(",")]
    except ValueError:
        raise PluginError(f"{BANDS_HELP}; {text!r} is not that") from None
    if any(band < 1 for band in bands):
        raise PluginError(f"{BANDS_HELP}; band numbers start at 1")
    return bands


def stage_text(stage: str) -> str:
    """A job's ``stage`` as the dock's state line says it (a chip count stays a count)."""
    chip = CHIP.match(stage or "")
    if chip:
        return f"segmenting: chip {chip[1]} of {chip[2]} done"
    return STAGES.get(stage, stage or "working")


def skipped_summary(reasons: Iterable[str]) -> str:
    """``"3 clicks skipped: 2 outside raster, 1 on nodata"`` (most frequent reason first); empty when none."""
    counts = Counter(str(reason) for reason in reasons)
    total = sum(counts.values())
    if not total:
        return ""
    noun = "click" if total == 1 else "clicks"
    return f"{total} {noun} skipped: " + ", ".join(f"{n} {reason}" for reason, n in counts.most_common())
