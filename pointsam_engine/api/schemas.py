"""The HTTP contract: pydantic request and response models, and their conversion to engine options.

Field names follow the CLI's options (``--sar-db`` is ``sar_db``), so a script can move between the two.
Coordinates are ``[x, y]`` in the given ``crs`` (default: the raster's), GeoJSON axis order.
"""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Tuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..config import INSTANCES, TRAIN, SegmentConfig, parse_bands, parse_stretch, stretch_text
from ..options import CHOICES
from ..options import NUMBERS as N

Coordinate = Tuple[float, float]
DEFAULT = SegmentConfig()  # every default below is this one's, or TRAIN's (pointsam_engine.config)


def _no_nul(value: Optional[str]) -> Optional[str]:
    if value is not None and "\x00" in value:
        raise ValueError("must not contain a NUL character")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")


class RasterOptions(Strict):
    """How the raster is read, as ``pointsam segment`` reads it."""

    raster: str = Field(min_length=1, max_length=4096, description="Path of a GDAL raster on the engine's machine.")
    bands: Optional[List[int]] = Field(None, min_length=1, max_length=3, description="1-based bands for R,G,B or one band.")
    stretch: str = Field(stretch_text(DEFAULT.stretch), max_length=40,
                         description="Percentiles low,high; or minmax; or none.")
    nodata: Optional[float] = N["nodata"].field(DEFAULT.nodata)
    sar_db: bool = DEFAULT.sar_db
    assume_crs: Optional[str] = Field(DEFAULT.assume_crs, max_length=2000)
    chip_scale: float = N["chip_scale"].field(DEFAULT.chip_scale, description="Source pixels per chip pixel.")

    _paths = field_validator("raster", "assume_crs")(_no_nul)

    def engine_options(self) -> Dict[str, Any]:
        return {"bands": parse_bands(self.bands), "stretch": parse_stretch(self.stretch), "nodata": self.nodata,
                "sar_db": self.sar_db, "assume_crs": self.assume_crs, "chip_scale": self.chip_scale}


class ModelChoice(Strict):
    """Which model runs the request; neither field given: the model the server was started with."""

    model: Optional[str] = Field(None, min_length=1, max_length=4096,
                                 description="Registered model name (see /v1/models) or checkpoint path; "
                                             "default: the server's model.")
    adapter: Optional[str] = Field(None, min_length=1, max_length=4096,
                                   description="Region adapter (*.adapter.pt) trained for the model.")

    _model_paths = field_validator("model", "adapter")(_no_nul)


class PredictRequest(RasterOptions, ModelChoice):
    positive: List[Coordinate] = Field(default_factory=list, max_length=64,
                                       description="Clicks on the object, [x, y] (at least one, or a box).")
    negative: List[Coordinate] = Field(default_factory=list, max_length=256, description="Clicks on what is not the object.")
    crs: Optional[str] = Field(None, max_length=2000, description="CRS of the clicks (default: the raster's).")
    out_crs: Optional[str] = Field(None, max_length=2000, description="CRS of the answer (default: the clicks' CRS).")
    box: Optional[Tuple[float, float, float, float]] = Field(
        None, description="Box prompt [xmin, ymin, xmax, ymax] in crs, with or without clicks.")

    _crs = field_validator("crs", "out_crs")(_no_nul)


class PrefetchRequest(RasterOptions, ModelChoice):
    point: Coordinate
    crs: Optional[str] = Field(None, max_length=2000)

    _crs = field_validator("crs")(_no_nul)


class SegmentJobRequest(RasterOptions, ModelChoice):
    """``pointsam segment`` as a job: points as a file path or inline GeoJSON."""

    points: Optional[str] = Field(None, min_length=1, max_length=4096, description="Path of a point layer.")
    points_geojson: Optional[Dict[str, Any]] = Field(None, description="Inline GeoJSON FeatureCollection of points.")
    points_crs: Optional[str] = Field(None, max_length=2000, description="CRS of inline points (default EPSG:4326, as GeoJSON).")
    output: str = Field(min_length=1, max_length=4096,
                        description="GeoPackage to write (.gpkg); an existing one keeps its other layers and styles.")
    overwrite: bool = Field(DEFAULT.overwrite, description="Replace the layers instances, boxes, bboxes, skipped if the output "
                                               "has them (never other layers); false: such an output is refused (409).")
    layer: Optional[str] = Field(None, max_length=500)
    instance_field: Optional[str] = Field(None, max_length=500)
    label_field: Optional[str] = Field(None, max_length=500)
    class_field: Optional[str] = Field(None, max_length=500)
    calibration: bool = DEFAULT.calibration
    calibration_iou: float = N["calibration_iou"].field(DEFAULT.calibration_iou)
    keep_overlaps: bool = Field(DEFAULT.keep_overlaps, description="Keep each object's own mask where masks overlap.")
    min_area: float = N["min_area"].field(DEFAULT.min_area, description="Drop objects smaller than this, in m² "
                                                                         "(geodesic, whatever the CRS).")
    max_hole_area: Optional[float] = N["max_hole_area"].field(DEFAULT.max_hole_area,
                                           description="Fill holes smaller than this, in m²; default 25 pixels.")
    simplify: Optional[float] = N["simplify"].field(DEFAULT.simplify,
                                      description="Simplification tolerance in metres, whatever the CRS; "
                                                  "default one pixel, 0: none.")
    regularize: Literal[CHOICES["regularize"].values] = Field(  # type: ignore[valid-type]
        DEFAULT.regularize, description=CHOICES["regularize"].help + " Features record regularized and iou_to_mask.")
    out_crs: Optional[str] = Field(None, max_length=2000)

    _strings = field_validator("points", "points_crs", "output", "layer", "instance_field", "label_field",
                               "class_field", "out_crs")(_no_nul)

    def config(self, base: SegmentConfig) -> SegmentConfig:
        return base.replace(**self.engine_options(), layer=self.layer, instance_field=self.instance_field,
                            label_field=self.label_field, class_field=self.class_field, calibration=self.calibration,
                            calibration_iou=self.calibration_iou, keep_overlaps=self.keep_overlaps,
                            min_area=self.min_area,
                            max_hole_area=self.max_hole_area, simplify=self.simplify, regularize=self.regularize,
                            out_crs=self.out_crs, overwrite=self.overwrite)


class BatchJobRequest(SegmentJobRequest):
    """``pointsam batch`` as a job: ``points`` over ``rasters`` on Dask (``raster`` and ``points_geojson`` unused)."""

    raster: str = Field("", max_length=0, description="Not used by a batch: give rasters.")
    rasters: List[str] = Field(min_length=1, max_length=100_000,
                               description="Raster files, folders, globs, list files (.txt) or mosaic VRTs.")
    points: str = Field(min_length=1, max_length=4096, description="Path of a point layer.")
    workers: Optional[int] = N["workers"].field(None, description="Worker processes of a local Dask cluster "
                                                                  "(default: one per core).")
    scheduler: Optional[str] = Field(None, max_length=2000, description="Address of a running Dask scheduler.")
    resume: bool = Field(False, description="Keep the tasks an earlier run finished (OUTPUT.work/).")

    _batch_strings = field_validator("scheduler")(_no_nul)

    @field_validator("rasters")
    @classmethod
    def _rasters_no_nul(cls, values: List[str]) -> List[str]:
        for value in values:
            _no_nul(value)
        return values


class TrainJobRequest(Strict):
    """``pointsam train`` as a job: rasters paired with point layers, on ``model`` (default: the server's base)."""

    model: Optional[str] = Field(None, min_length=1, max_length=4096,
                                 description="Base model: registered name or checkpoint path; default: the server's.")
    rasters: List[str] = Field(min_length=1, max_length=64)
    points: List[str] = Field(min_length=1, max_length=64)
    output: str = Field(min_length=1, max_length=4096, description="Adapter file to write (NAME.adapter.pt).")
    steps: int = N["steps"].field(TRAIN.steps)
    lr: float = N["lr"].field(TRAIN.lr)
    seed: int = N["seed"].field(TRAIN.seed)
    rank: int = N["rank"].field(TRAIN.rank)
    # block numbers of up to 3 digits (vit_h has 32 blocks): a range like 0-99999999999 would be expanded whole
    blocks: Optional[str] = Field(None, max_length=200, pattern=r"^\d{1,3}(-\d{1,3})?(,\d{1,3}(-\d{1,3})?)*$",
                                  description="Encoder blocks to adapt, e.g. 1-11 (default: all but the first).")
    train_decoder: bool = False
    val_fraction: float = N["val_fraction"].field(TRAIN.val_fraction)
    val_polygons: List[str] = Field(default_factory=list, max_length=64)
    val_every: int = N["val_every"].field(TRAIN.val_every)
    checkpoint_every: int = N["checkpoint_every"].field(TRAIN.checkpoint_every)
    background: int = N["background"].field(TRAIN.background)
    no_calibration: bool = False
    no_prototypes: bool = False
    prototype_weight: float = N["prototype_weight"].field(TRAIN.prototype_weight)
    anchor_weight: float = N["anchor_weight"].field(TRAIN.anchor_weight, description="Weight of the base model's masks as "
                                                    "an anchor against self-training's drift (0: PointSAM as published).")
    bands: Optional[List[int]] = Field(None, min_length=1, max_length=3)
    stretch: str = Field(stretch_text(DEFAULT.stretch), max_length=40)
    nodata: Optional[float] = N["nodata"].field(DEFAULT.nodata)
    sar_db: bool = DEFAULT.sar_db
    assume_crs: Optional[str] = Field(None, max_length=2000)
    layer: Optional[str] = Field(None, max_length=500)
    instance_field: Optional[str] = Field(None, max_length=500)
    label_field: Optional[str] = Field(None, max_length=500)
    chip_scale: float = N["chip_scale"].field(DEFAULT.chip_scale)
    accelerator: Literal[CHOICES["accelerator"].values] = TRAIN.accelerator  # type: ignore[valid-type]
    resume: bool = False
    overwrite: bool = False

    @field_validator("rasters", "points", "val_polygons")
    @classmethod
    def _paths_ok(cls, values: List[str]) -> List[str]:
        for value in values:
            _no_nul(value)
        return values

    _strings = field_validator("model", "output", "assume_crs", "layer", "instance_field", "label_field")(_no_nul)


class EvaluateRequest(Strict):
    """``pointsam evaluate``: predictions (a PointSAM GeoPackage, or any layer with ``point_fid``) against truth."""

    pred: str = Field(min_length=1, max_length=4096, description="Predictions: a vector file on the engine's machine.")
    pred_layer: str = Field(INSTANCES, min_length=1, max_length=500)
    truth: str = Field(min_length=1, max_length=4096, description="Reference polygons.")
    truth_layer: Optional[str] = Field(None, min_length=1, max_length=500)
    points: Optional[str] = Field(None, min_length=1, max_length=4096,
                                  description="The clicks the predictions came from (paired by point_fid).")
    points_layer: Optional[str] = Field(None, min_length=1, max_length=500)
    raster: Optional[str] = Field(None, min_length=1, max_length=4096,
                                  description="Grid to compare on; default: the grid recorded in pred.")

    _strings = field_validator("pred", "pred_layer", "truth", "truth_layer", "points", "points_layer", "raster")(_no_nul)


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    device: str
    model: str
    precision: str = Field("fp32", description="the image encoder's arithmetic: fp32, bf16, fp16 or int8 "
                                                "(pointsam serve --precision)")
    torch: str = Field("", description="torch version, with its build (e.g. 2.14.1+cpu)")
    gpu: Optional[str] = Field(None, description="the first CUDA GPU torch sees, or null")
    python: str = Field("", description="the engine's interpreter")


class ModelInfo(BaseModel):
    name: str
    path: Optional[str] = None
    loaded: bool
    label: Optional[str] = None
    sha256: Optional[str] = None
    model_type: Optional[str] = None
    image_size: Optional[int] = None
    adapter: Optional[str] = None


class AdapterBase(BaseModel):
    name: str
    sha256: str
    model_type: Optional[str] = None


class AdapterInfo(BaseModel):
    name: str
    path: str
    base: AdapterBase = Field(description="The model the adapter was trained for; it is refused on any other.")


class CatalogEntry(BaseModel):
    """An official SAM checkpoint: what ``POST /v1/jobs/pull`` downloads and whether it is here."""

    name: str
    file: str
    url: str = Field(description="Where a pull downloads it from (the official URL unless POINTSAM_MODEL_BASE_URL is set).")
    size: int = Field(description="Bytes.")
    sha256: str = Field(description="The official file's sha256; a download is installed only when it matches.")
    installed: bool
    path: Optional[str] = None
    sha256_state: Literal["verified", "not verified", "sha256 mismatch", "wrong size", "not installed"] = Field(
        description="What is known without hashing again: verified by a pull or verify of this very file, ...")


class Models(BaseModel):
    loaded: ModelInfo = Field(description="The server's own model, used when a request names none.")
    available: List[ModelInfo]
    adapters: List[AdapterInfo] = Field(description="*.adapter.pt files in the model folders and --adapters-dir.")
    catalog: List[CatalogEntry] = Field(description="The official SAM checkpoints, installed or downloadable.")
    model_dir: str = Field(description="The model folder downloads go to (a manually downloaded file can go there too).")


class ModelName(Strict):
    name: str = Field(min_length=1, max_length=100, description="An official checkpoint: vit_b, vit_l, vit_h (SAM) or "
                                                                "hiera_t, hiera_s, hiera_b+, hiera_l (SAM 2.1).")


class VerifyResult(BaseModel):
    name: str
    path: str
    sha256: str = Field(description="The installed file's sha256.")
    ok: bool = Field(description="Whether it is the official one.")


class RemoveResult(BaseModel):
    name: str
    removed: str = Field(description="The file deleted.")


class Evaluation(BaseModel):
    miou: float
    mf1: float
    images: int
    instances: int
    missed_points: int
    truth_hit_twice: int
    merges: int
    clicks_on_background: int
    clicks_off_raster: int = Field(description="Clicks off the raster's grid: segment skipped them, not scored.")


class PredictResponse(BaseModel):
    object: Dict[str, Any] = Field(description="GeoJSON Feature: the polygon, with score and measures.")
    box: Dict[str, Any] = Field(description="GeoJSON Polygon: the oriented (minimum-area) box.")
    bbox: Dict[str, Any] = Field(description="GeoJSON Polygon: the axis-aligned box.")
    crs: str
    encoded: bool = Field(description="Whether the image encoder ran for this call (False: cached chip).")
    chip: List[int]
    seconds: float


class PrefetchResponse(BaseModel):
    encoded: bool
    seconds: float


class JobView(BaseModel):
    id: str
    kind: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: float
    stage: str
    stages: List[str] = Field(description="Each step the job went through, once, in the order first "
                                          "entered; a step that counts (chip 3 of 40) shows its latest count")
    message: str
    result: Optional[Dict[str, Any]] = None
    error: Optional[Dict[str, Any]] = None
    created: float
    finished: Optional[float] = None


class JobList(BaseModel):
    jobs: List[JobView]


class ErrorBody(BaseModel):
    error: str
    message: str
