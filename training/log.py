"""The run's CSV log (every loss term and validation figure, one row each) and the plot of it."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import List

from pointsam_engine.output import atomic_path

LOSS_COLUMNS = ("loss", "focal", "dice", "iou_mse", "prototype")
VALIDATION_COLUMNS = ("miou", "single_click_share", "merge_rate", "area_vs_base")


class CsvLog:
    """Rows of loss terms and validation figures, rewritten atomically on every row; columns grow as keys appear.

    Args:
        path: the CSV file.
        append: keep the rows the file already holds (a resumed run).
        enabled: False in every process but the one that writes files.
    """

    def __init__(self, path: Path, append: bool, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled
        self.rows: List[dict] = _read_rows(self.path) if append and self.path.exists() else []

    def trim(self, step: int) -> None:
        """Drop the rows after ``step``: a resumed run redoes the steps after its checkpoint."""
        self.rows = [r for r in self.rows if int(r["step"]) <= step]

    def write(self, row: dict) -> None:
        """Add a row (it needs a ``step``) and rewrite the file."""
        if not self.enabled:
            return
        self.rows.append(row)
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        with atomic_path(self.path) as tmp, tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, columns)
            writer.writeheader()
            writer.writerows(self.rows)


def plot(csv_path: Path, png: Path) -> None:
    """Training losses above, validation figures below, against the step; written to ``png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _read_rows(Path(csv_path))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for axis, keys, style in ((top, LOSS_COLUMNS, {"linewidth": 0.8}), (bottom, VALIDATION_COLUMNS, {"marker": "o"})):
        for key in keys:
            points = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
            if points:
                axis.plot(*zip(*points), label=key, **style)
        if axis.lines:
            axis.legend(fontsize=7)
    top.set_ylabel("training loss")
    bottom.set_xlabel("step")
    bottom.set_ylabel("validation")
    fig.tight_layout()
    with atomic_path(png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def _read_rows(path: Path) -> List[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))
