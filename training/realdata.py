"""Training chips from real labelled imagery: orthophotos with their building footprints.

Each source is read as the engine reads a raster a user gives it (its bands, the default 2-98 percentile
stretch over the whole mosaic), its footprints are burnt into an instance raster, and each footprint gets
the click an analyst would give it (its representative point). A sample is a chip at a random ground
scale (objects from half to nearly twice their size in pixels), with photometric jitter (gamma, contrast,
brightness, per-channel gain, sometimes grey) and the 8 flips/transposes, prompted as
:mod:`training.data` prompts generated scenes.

The Banepa split is by whole tiles: the easternmost column of the 6 x 8 block of z19 tiles
(x = :data:`BANEPA_HELD_OUT_X`, 8 chips) is held out for evaluation, the other 40 chips train; Kampala is
never trained on (the independent check).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Tuple

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from rasterio.features import rasterize
from scipy import ndimage

from pointsam_engine.config import SegmentConfig
from pointsam_engine.evaluate import Grid, score_image, summarize
from pointsam_engine.pipeline import make_predictor, segment
from pointsam_engine.raster import Raster, compute_normalization

from .data import Sample, augment, prompts_for

BUILDINGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "A_buildings_georef"
BANEPA_HELD_OUT_X = 386695  # the easternmost tile column
DENSE_CHIP = "Kampala dense chip"  # the name of that evaluation set, one of Kampala's 27 chips
REAL_DATA = ("real labelled buildings: 40 Banepa z19 chips (0.13 m; OpenAerialMap imagery CC BY 4.0, HOTOSM; "
             "OpenStreetMap footprints ODbL), the easternmost tile column held out; SpaceNet 4 Atlanta sample "
             "(0.5 m, CC BY-SA 4.0) with its 43 footprints; Kampala never trained on")


@dataclass
class LabelledImage:
    """A real image as the engine sees it, with its footprints as an instance raster and one click each."""

    image: np.ndarray  # (H, W, 3) uint8
    labels: np.ndarray  # (H, W) int32, 0 background, k the k-th footprint
    clicks: np.ndarray  # (K, 2) x, y pixel positions of footprint k + 1's click
    name: str


def banepa_chips(held_out: bool, root: Path = BUILDINGS) -> List[Path]:
    """Banepa's chips of the training split (``held_out=False``) or of the held-out column."""
    chips = sorted((root / "hotosm_oam_banepa" / "chips").glob("OAM-*-19.tif"))
    return [c for c in chips if (int(c.stem.split("-")[1]) == BANEPA_HELD_OUT_X) == held_out]


def load_mosaic(chips: Sequence[Path], footprints: gpd.GeoDataFrame, name: str) -> LabelledImage:
    """Adjacent chips of one grid (same CRS and resolution) put together as one image, each stretched as the
    engine stretches it when given alone, with the footprints whose representative point lies on them."""
    parts = [_as_engine_sees(chip) for chip in chips]
    res = parts[0][1].a, -parts[0][1].e
    offsets = [(round(-t.f / res[1]), round(t.c / res[0])) for _, t, _ in parts]
    top, left = min(r for r, _ in offsets), min(c for _, c in offsets)
    height = max(r - top + img.shape[0] for (r, _), (img, _, _) in zip(offsets, parts))
    width = max(c - left + img.shape[1] for (_, c), (img, _, _) in zip(offsets, parts))
    image = np.zeros((height, width, 3), np.uint8)
    for (r, c), (img, _, _) in zip(offsets, parts):
        image[r - top:r - top + img.shape[0], c - left:c - left + img.shape[1]] = img
    transform = rasterio.transform.from_origin(left * res[0], -top * res[1], res[0], res[1])
    return _labelled(image, transform, parts[0][2], footprints, name)


def load_raster(path: Path, footprints: gpd.GeoDataFrame, name: str) -> LabelledImage:
    """One raster as the engine sees it (its bands, the default stretch, nodata kept out) and its footprints."""
    image, transform, crs = _as_engine_sees(path)
    return _labelled(image, transform, crs, footprints, name)


def _as_engine_sees(path: Path):
    with Raster(str(path)) as ras:
        norm = compute_normalization(ras, SegmentConfig().stretch)
        image, _ = ras.read_chip(0, 0, max(ras.height, ras.width), norm)
        return image, ras.transform, ras.crs


def _labelled(image: np.ndarray, transform, crs, footprints: gpd.GeoDataFrame, name: str) -> LabelledImage:
    height, width = image.shape[:2]
    shapes = footprints.to_crs(crs).geometry.values
    points = shapely.point_on_surface(shapes)
    inside = shapely.within(points, shapely.box(*rasterio.transform.array_bounds(height, width, transform)))
    shapes, points = shapes[inside], shapely.get_coordinates(points[inside])
    labels = rasterize(((g, k + 1) for k, g in enumerate(shapes)), out_shape=(height, width), transform=transform,
                       dtype="int32") if len(shapes) else np.zeros((height, width), np.int32)
    cols, rows = ~transform @ (points[:, 0], points[:, 1])
    return LabelledImage(image, labels, np.column_stack([cols, rows]), name)


class RealPool:
    """Labelled real images to crop training chips from, at random ground scales and with photometric jitter."""

    def __init__(self, images: Sequence[LabelledImage], scale: Tuple[float, float] = (0.5, 1.8)):
        self.images = [img for img in images if (img.labels > 0).any()]
        if not self.images:
            raise ValueError("no footprint lies on the training images; check the footprints' CRS and extent")
        self.scale = scale
        self.weights = np.array([float((img.labels > 0).sum()) for img in self.images])
        self.weights /= self.weights.sum()

    def sample(self, rng: np.random.Generator, chip: int, max_objects: int) -> Sample:
        """A chip of ``chip`` pixels with up to ``max_objects`` footprints, each with its prompt."""
        for _ in range(50):
            item = self.images[int(rng.choice(len(self.images), p=self.weights))]
            zoom = float(np.exp(rng.uniform(*np.log(self.scale))))
            span = min(int(round(chip / zoom)), *item.labels.shape)
            r0 = int(rng.integers(0, item.labels.shape[0] - span + 1))
            c0 = int(rng.integers(0, item.labels.shape[1] - span + 1))
            image = _resize(item.image[r0:r0 + span, c0:c0 + span], chip, order=1)
            labels = _resize(item.labels[r0:r0 + span, c0:c0 + span], chip, order=0)
            factor = chip / span
            whole = np.bincount(item.labels.ravel(), minlength=len(item.clicks) + 1) * factor ** 2
            sample = prompts_for(image, labels, whole, (item.clicks - (c0, r0)) * factor, rng, max_objects)
            if sample is not None:
                return augment(Sample(jitter(sample.image, rng), sample.masks, sample.points, sample.labels), rng)
        raise RuntimeError("no real chip with a whole footprint found")


def _resize(array: np.ndarray, size: int, order: int) -> np.ndarray:
    factor = size / array.shape[0]
    zoom = (factor, factor) + (1,) * (array.ndim - 2)
    out = ndimage.zoom(array, zoom, order=order, grid_mode=True, mode="nearest")
    return out[:size, :size]


def jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Photometric augmentation of a uint8 RGB chip: gamma, contrast, brightness, per-channel gain, grey."""
    x = image.astype(np.float32) / 255.0
    x = x ** np.exp(rng.uniform(-0.25, 0.25))
    x = (x - 0.5) * np.exp(rng.uniform(-0.3, 0.3)) + 0.5 + rng.uniform(-0.1, 0.1)
    x = x * np.exp(rng.uniform(-0.08, 0.08, 3))
    if rng.random() < 0.15:
        x = np.repeat(x.mean(axis=2, keepdims=True), 3, axis=2)
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def training_pool(root: Path = BUILDINGS, zoom: Tuple[float, float] = (0.5, 1.8)) -> RealPool:
    """The real training data: Banepa's training chips as one mosaic, and the Atlanta sample."""
    banepa, atlanta = root / "hotosm_oam_banepa", root / "spacenet4_atlanta"
    if not (banepa / "chips").is_dir():
        raise FileNotFoundError(f"real training data {banepa} is absent; it comes with ../shared/data")
    images = [load_mosaic(banepa_chips(False, root), gpd.read_file(banepa / "osm_buildings.geojson"), "banepa")]
    if (atlanta / "sample_geotiff.tif").exists():
        images.append(load_raster(atlanta / "sample_geotiff.tif", gpd.read_file(atlanta / "geotiff_labels.geojson"),
                                  "atlanta"))
    return RealPool(images, scale=zoom)


def chip_cases(chips: Sequence[Path], labels: gpd.GeoDataFrame, folder: Path, tag: str) -> Iterator[tuple]:
    """``(raster, truth clipped to the chip, clicks path)`` for each chip holding a footprint: one click per
    footprint whose representative point lies on the chip, at that point, as an analyst would click."""
    for chip in chips:
        with rasterio.open(chip) as src:
            bounds, crs = shapely.box(*src.bounds), src.crs
        truth = labels.to_crs(crs)
        truth = truth[truth.representative_point().within(bounds)].copy()
        if truth.empty:
            continue
        truth["geometry"] = truth.geometry.intersection(bounds)
        points = folder / f"{tag}_{chip.stem}_points.gpkg"
        gpd.GeoDataFrame(geometry=truth.representative_point().values, crs=crs).to_file(points, layer="points")
        yield chip, truth.reset_index(drop=True), points


def evaluation_sets(folder: Path, root: Path = BUILDINGS) -> Dict[str, list]:
    """The real evaluation sets, each a list of :func:`chip_cases`: every Kampala chip (27: z19, z20, z21),
    Kampala's dense chip (:data:`DENSE_CHIP`: the z19 validation chip, 79 footprints with their click on it) and
    Banepa's held-out tile column."""
    kampala, banepa = root / "hotosm_oam_kampala", root / "hotosm_oam_banepa"
    labels = gpd.read_file(kampala / "chips_labels_all.geojson")
    every = sorted((kampala / "val" / "chips").glob("*.tif")) + sorted((kampala / "train_z19" / "chips").glob("*.tif"))
    dense = [c for c in every if c.parent.parent.name == "val" and c.stem.endswith("-19")]
    return {f"Kampala ({len(every)} chips)": list(chip_cases(every, labels, folder, "kampala")),
            DENSE_CHIP: list(chip_cases(dense, labels, folder, "kampala_dense")),
            "Banepa held-out (8 chips)": list(chip_cases(banepa_chips(True, root),
                                                          gpd.read_file(banepa / "osm_buildings.geojson"), folder,
                                                          "banepa"))}


def measure_real(model: str, folder: Path, root: Path = BUILDINGS, only: str = "") -> Dict[str, dict]:
    """mIoU and mF1 (means over chips, as :func:`~pointsam_engine.evaluate.summarize`) of ``model`` with one
    click per footprint, segmented by the engine with its defaults, per :func:`evaluation_sets` set (``only``:
    the sets whose name starts so)."""
    predictor = make_predictor(SegmentConfig(model=str(model), device="cpu"))
    out = {}
    for name, cases in evaluation_sets(folder, root).items():
        if not name.startswith(only):
            continue
        scores = []
        for raster, truth, points in cases:
            result = segment(raster, points, None, predictor=predictor)
            clicks = gpd.read_file(points, fid_as_index=True)
            scores.append(score_image(result.layers["instances"], truth, Grid.from_raster(raster), clicks))
        out[name] = summarize(scores)
    return out
