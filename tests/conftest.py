"""Shared fixtures: tiny rasters and point layers written in tmp_path, a tiny SAM, a stub predictor."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import List

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin

from pointsam_engine.errors import Cancelled
from pointsam_engine.masks import MaskPatch, Prompt
from pointsam_engine.raster import apply_affine

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"

# tests/qgis runs inside Debian's QGIS (/usr/bin/python3, see .ci/run); other interpreters leave it out
collect_ignore = [] if importlib.util.find_spec("qgis") else ["qgis"]

# The official SAM architecture (segment-anything's classes), scaled down so tests run in seconds.
TINY_ARCH = dict(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,),
                 image_size=256, window_size=4, prompt_embed_dim=32, decoder_depth=1, decoder_mlp_dim=64,
                 decoder_num_heads=2, iou_head_hidden_dim=32)


def write_raster(path, data: np.ndarray, crs="EPSG:32633", transform=None, nodata=None, **profile) -> Path:
    """Write ``data`` (bands, rows, cols) as a GeoTIFF; default 0.5 m pixels in UTM 33N."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    transform = transform or from_origin(500000.0, 4000000.0, 0.5, 0.5)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=transform, nodata=nodata, **profile) as dst:
        dst.write(data)
    return Path(path)


def write_points(path, xy, crs="EPSG:32633", layer=None, **fields) -> Path:
    """Write points (list of (x, y) in ``crs``) with optional attribute columns."""
    frame = gpd.GeoDataFrame(fields or {"id": np.arange(len(xy))}, geometry=[shapely.Point(x, y) for x, y in xy], crs=crs)
    frame.to_file(path, layer=layer) if layer else frame.to_file(path)
    return Path(path)


def grid_to_map(transform, col, row):
    """Map x, y of a (fractional) pixel position: column, row."""
    x, y = apply_affine(transform, col, row)
    return float(x), float(y)


def pixel_centres(transform, rows_cols):
    """Map coordinates of pixel centres."""
    return [grid_to_map(transform, c + 0.5, r + 0.5) for r, c in rows_cols]


class SquarePredictor:
    """Stand-in for SAM: a square of ``half`` pixels around each object's first positive click.

    Each negative click inside the square cuts the square halfway between the click and that
    negative, on the negative's side. Logits fall off from the click, so the nearer object wins
    a contested pixel. Records every call, so tests can check the prompts the pipeline sent.
    """

    def __init__(self, half: int = 10, chip_size: int = 256, label: str = "stub@000000000000"):
        self.half, self.chip_size, self.label = half, chip_size, label
        self.calls: List[List[Prompt]] = []
        self.chips: List[tuple] = []
        self.encoder_passes = 0
        self._shape = (0, 0)

    def set_chip(self, image, valid=None, key=None) -> bool:
        self._shape = image.shape[:2]
        self.chips.append(image.shape)
        self.encoder_passes += 1
        return True

    def set_cached_chip(self, key, shape) -> bool:
        return False

    def predict(self, prompts):
        self.calls.append(list(prompts))
        return [self.square(p) for p in prompts]

    def square(self, prompt: Prompt):
        x, y = prompt.points[prompt.labels == 1][0]
        c0, c1, r0, r1 = x - self.half, x + self.half, y - self.half, y + self.half
        for nx, ny in prompt.points[prompt.labels == 0]:
            if c0 <= nx < c1 and r0 <= ny < r1:
                if abs(nx - x) >= abs(ny - y):
                    c0, c1 = (c0, (x + nx) / 2) if nx > x else ((x + nx) / 2, c1)
                else:
                    r0, r1 = (r0, (y + ny) / 2) if ny > y else ((y + ny) / 2, r1)
        r0, r1 = max(int(round(r0)), 0), min(int(round(r1)), self._shape[0])
        c0, c1 = max(int(round(c0)), 0), min(int(round(c1)), self._shape[1])
        if r1 <= r0 or c1 <= c0:
            return None
        rr, cc = np.mgrid[r0:r1, c0:c1]
        logits = (self.half + 1 - np.maximum(abs(rr + 0.5 - y), abs(cc + 0.5 - x))).astype(np.float32)
        return MaskPatch(r0, c0, np.maximum(logits, 0.5), 0.9)


@pytest.fixture
def stub():
    return SquarePredictor()


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: a second thread only adds contention on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny SAM (random weights, seed 0) saved in the engine's own checkpoint format."""
    import torch

    from pointsam_engine.sam.model import SamArch, build_sam, save_pointsam_checkpoint

    torch.manual_seed(0)
    arch = SamArch(**TINY_ARCH)
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    save_pointsam_checkpoint(build_sam(arch), arch, path, name="tiny-test", provenance={"note": "random weights"})
    return path


@pytest.fixture
def blocks_scene(tmp_path):
    """A 600x700 UTM RGB scene with 9x9 bright blocks (40x50 px) and a click at each block centre."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 50, (3, 600, 700), dtype=np.uint8)
    centres = []
    for r in range(50, 550, 60):
        for c in range(50, 650, 70):
            img[:, r:r + 40, c:c + 50] = 200
            centres.append((r + 20, c + 25))
    transform = from_origin(500000.0, 4000000.0, 0.5, 0.5)
    raster = write_raster(tmp_path / "scene.tif", img, transform=transform)
    points = write_points(tmp_path / "points.gpkg", pixel_centres(transform, centres),
                          cls=["building"] * len(centres))
    return raster, points, transform, centres


def work_until_cancelled():
    """A job's work that runs until it is cancelled, then stops as the engine's jobs do:
    ``(work, started)``, ``started`` set once the work runs."""
    started = threading.Event()

    def work(progress, cancel):
        started.set()
        while not cancel.wait(0.01):
            pass
        raise Cancelled("the run was cancelled; nothing was written")

    return work, started


class Concurrency:
    """Counts how many callers are inside ``with meter:`` at once; ``peak`` is the most seen."""

    def __init__(self):
        self._lock, self._running, self.peak = threading.Lock(), 0, 0

    def __enter__(self):
        with self._lock:
            self._running += 1
            self.peak = max(self.peak, self._running)

    def __exit__(self, *exc):
        with self._lock:
            self._running -= 1

