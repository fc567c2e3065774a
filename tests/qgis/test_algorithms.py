"""The Processing algorithms beside Segment points, run with ``processing.run`` against the real engine:
Points to boxes, Fine-tune from points (then its adapter in Segment points), Evaluate, and Segment points
chained into Evaluate in a graphical-modeler model."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildAlgorithm,
    QgsProcessingModelChildParameterSource,
    QgsProcessingModelOutput,
    QgsProcessingModelParameter,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterRasterLayer,
)

from .conftest import feature_count as _count

TEMPORARY = "TEMPORARY_OUTPUT"


class _Feedback(QgsProcessingFeedback):
    """Records progress, stages and warnings; cancels once the job has reported some, when asked to."""

    def __init__(self, cancel_when_started: bool = False):
        super().__init__()
        self.seen, self.cancel_when_started = [], cancel_when_started
        self.stages, self.warnings = [], []
        self.progressChanged.connect(self._record)

    def setProgressText(self, text):  # noqa: N802
        self.stages.append(text)
        super().setProgressText(text)

    def pushWarning(self, text):  # noqa: N802
        self.warnings.append(text)
        super().pushWarning(text)

    def _record(self, value: float) -> None:
        self.seen.append(value)
        if self.cancel_when_started and value > 0:
            self.cancel()


@pytest.fixture(scope="module")
def instances(plugin, scene):
    import processing

    result = processing.run("pointsam:segmentpoints", {"RASTER": scene["raster"], "POINTS": scene["points"],
                                                       "INSTANCES": TEMPORARY, "BOXES": TEMPORARY, "BBOXES": TEMPORARY})
    yield result["INSTANCES"]
    del result


def test_points_to_boxes_gives_one_oriented_and_one_axis_box_per_click_and_no_instances(plugin, scene):
    import processing

    result = processing.run("pointsam:pointstoboxes", {"RASTER": scene["raster"], "POINTS": scene["points"],
                                                       "BOXES": TEMPORARY, "BBOXES": TEMPORARY})
    assert set(result) == {"BOXES", "BBOXES"}
    boxes, bboxes = result["BOXES"], result["BBOXES"]
    assert boxes.featureCount() == bboxes.featureCount() == _count(scene["points"])
    assert {"angle_deg", "length_m", "width_m", "point_fid"} <= set(boxes.fields().names())
    box = next(boxes.getFeatures())
    assert box.geometry().constGet().vertexCount() == 5, "a box: four corners and the closing one"
    assert box["length_m"] >= box["width_m"] > 0


def test_finetune_writes_an_adapter_that_segment_points_applies(plugin, scene, tmp_path):
    import processing

    from qgis_plugin import catalog

    trained = []
    catalog.changes.adapter_trained.connect(lambda header, kept: trained.append((header["path"], kept)))
    feedback = _Feedback()
    adapter = tmp_path / "region.adapter.pt"
    result = processing.run("pointsam:finetune", {"RASTER": scene["raster"], "POINTS": scene["points"], "STEPS": 2,
                                                  "VAL_FRACTION": 0, "RANK": 2, "OUTPUT": str(adapter)},
                            feedback=feedback)
    assert result["OUTPUT"] == str(adapter) and adapter.is_file()
    assert feedback.seen and feedback.seen[-1] == 100, "progress follows the train job to its end"
    assert "step 2/2" in feedback.stages and not feedback.warnings
    assert trained == [(str(adapter), 2)], "without validation the last step is kept; the dock is told"
    assert str(adapter) in [a["path"] for a in catalog.adapters()], "the dock offers it, wherever it was saved"
    catalog.forget()
    segmented = processing.run("pointsam:segmentpoints", {"RASTER": scene["raster"], "POINTS": scene["points"],
                                                          "ADAPTER": str(adapter), "INSTANCES": TEMPORARY,
                                                          "BOXES": TEMPORARY, "BBOXES": TEMPORARY})
    labels = {feature["model"] for feature in segmented["INSTANCES"].getFeatures()}
    assert len(labels) == 1 and "+region@" in labels.pop(), "every feature names the adapter that made it"


def test_cancelled_finetune_raises_and_writes_no_adapter(plugin, scene, tmp_path):
    import processing

    adapter = tmp_path / "cancelled.adapter.pt"
    with pytest.raises(QgsProcessingException, match="cancelled"):
        processing.run("pointsam:finetune", {"RASTER": scene["raster"], "POINTS": scene["points"], "STEPS": 500,
                                             "VAL_FRACTION": 0, "OUTPUT": str(adapter)},
                       feedback=_Feedback(cancel_when_started=True))
    assert not adapter.exists()


def test_evaluate_scores_instances_against_the_reference(instances, scene, tmp_path):
    import processing

    figures = tmp_path / "figures.json"
    result = processing.run("pointsam:evaluate", {"PREDICTIONS": instances, "REFERENCE": scene["truth"],
                                                  "POINTS": scene["points"], "RASTER": scene["raster"],
                                                  "JSON": str(figures)})
    assert result["MIOU"] > 0.6 and 0 < result["MF1"] <= 1
    assert result["INSTANCES"] == _count(scene["points"]) and result["MISSED_POINTS"] == 0
    assert json.loads(figures.read_text())["miou"] == pytest.approx(result["MIOU"])
    without_points = processing.run("pointsam:evaluate", {"PREDICTIONS": instances, "REFERENCE": scene["truth"],
                                                          "RASTER": scene["raster"]})
    assert without_points["MIOU"] == pytest.approx(result["MIOU"], abs=0.05)
    assert not without_points.get("JSON")


def test_evaluate_without_point_fid_gives_the_engines_one_line(plugin, scene):
    import processing

    with pytest.raises(QgsProcessingException) as error:
        processing.run("pointsam:evaluate", {"PREDICTIONS": scene["truth"], "REFERENCE": scene["truth"],
                                             "POINTS": scene["points"], "RASTER": scene["raster"]})
    assert "no point_fid field" in str(error.value) and "\n" not in str(error.value)
    assert "the predictions 'buildings_truth' (layer instances)" in str(error.value), str(error.value)


def _segment_then_evaluate() -> QgsProcessingModelAlgorithm:
    """What an analyst builds in the graphical modeler: Segment points, its instances into Evaluate."""
    model = QgsProcessingModelAlgorithm("Segment and evaluate", "PointSAM tests")
    for parameter in (QgsProcessingParameterRasterLayer("RASTER", "Raster"),
                      QgsProcessingParameterFeatureSource("POINTS", "Points", [QgsProcessing.SourceType.TypeVectorPoint]),
                      QgsProcessingParameterFeatureSource("REFERENCE", "Reference polygons",
                                                          [QgsProcessing.SourceType.TypeVectorPolygon])):
        model.addModelParameter(parameter, QgsProcessingModelParameter(parameter.name()))
    source = QgsProcessingModelChildParameterSource
    segment = QgsProcessingModelChildAlgorithm("pointsam:segmentpoints")
    segment.setChildId("segment")
    for name in ("RASTER", "POINTS"):
        segment.addParameterSources(name, [source.fromModelParameter(name)])
    model.addChildAlgorithm(segment)
    evaluate = QgsProcessingModelChildAlgorithm("pointsam:evaluate")
    evaluate.setChildId("evaluate")
    evaluate.addParameterSources("PREDICTIONS", [source.fromChildOutput("segment", "INSTANCES")])
    for name, parameter in (("REFERENCE", "REFERENCE"), ("POINTS", "POINTS"), ("RASTER", "RASTER")):
        evaluate.addParameterSources(name, [source.fromModelParameter(parameter)])
    figures = QgsProcessingModelOutput("figures")
    figures.setChildId("evaluate")
    figures.setChildOutputName("JSON")
    evaluate.setModelOutputs({"figures": figures})
    model.addChildAlgorithm(evaluate)
    return model


def test_a_modeler_model_chains_segment_points_into_evaluate(plugin, scene, tmp_path):
    import processing

    model = _segment_then_evaluate()
    assert [p.name() for p in model.parameterDefinitions()] == ["RASTER", "POINTS", "REFERENCE", "evaluate:figures"]
    result = processing.run(model, {"RASTER": scene["raster"], "POINTS": scene["points"],
                                    "REFERENCE": scene["truth"], "evaluate:figures": str(tmp_path / "figures.json")})
    scores = result["CHILD_RESULTS"]["evaluate"]
    assert 0.6 < scores["MIOU"] <= 1, "the bundled model reaches over 0.6 on generated buildings"
    assert scores["INSTANCES"] == _count(scene["points"])
    assert json.loads((tmp_path / "figures.json").read_text())["miou"] == pytest.approx(scores["MIOU"])


def test_finetune_defaults_are_the_engines_train_job_defaults(plugin):
    from pathlib import Path

    from qgis.core import QgsApplication

    saved = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"  # kept current by the engine's tests
    api = json.loads(saved.read_text())["components"]["schemas"]["TrainJobRequest"]["properties"]
    algorithm = QgsApplication.processingRegistry().algorithmById("pointsam:finetune")
    for parameter, field in (("STEPS", "steps"), ("RANK", "rank"), ("LR", "lr"), ("VAL_FRACTION", "val_fraction"),
                             ("ANCHOR_WEIGHT", "anchor_weight")):
        assert float(algorithm.parameterDefinition(parameter).defaultValue()) == api[field]["default"], parameter


def test_finetune_that_keeps_step_0_says_the_adapter_changes_nothing(plugin, scene, tmp_path):
    import processing

    from qgis_plugin import catalog

    feedback = _Feedback()
    adapter = tmp_path / "unchanged.adapter.pt"
    # a learning rate too small to move any mask: validation finds no step better than the base model's
    processing.run("pointsam:finetune", {"RASTER": scene["raster"], "POINTS": scene["points"], "STEPS": 1, "LR": 1e-7,
                                         "VAL_FRACTION": 0.5, "VAL_POLYGONS": scene["truth"], "RANK": 2,
                                         "OUTPUT": str(adapter)}, feedback=feedback)
    assert adapter.is_file()
    assert len(feedback.warnings) == 1 and "kept step 0" in feedback.warnings[0]
    assert "changes nothing" in feedback.warnings[0]
    catalog.forget()


def test_segment_points_into_the_users_geopackage_keeps_its_other_layers_and_styles(plugin, scene, tmp_path):
    import processing

    from .test_dock import _foreign_geopackage, _rows, _styles

    output = tmp_path / "mine.gpkg"
    _foreign_geopackage(output)
    before, styles = _rows(output), _styles(output)
    feedback = _Feedback()
    result = processing.run("pointsam:segmentpoints", {"RASTER": scene["raster"], "POINTS": scene["points"],
                                                       "INSTANCES": str(output), "BOXES": str(output),
                                                       "BBOXES": TEMPORARY}, feedback=feedback)
    assert _rows(output) == before and _styles(output) == styles, "the user's layer and its style are untouched"
    assert len(_rows(output, "instances")) == len(_rows(output, "boxes")) == _count(scene["points"])
    assert result["INSTANCES"] == f"{output}|layername=instances"
    said = ("starting engine…", "waiting for the engine", "starting the job", "reading the raster and points",
            "encoding chip", "decoding chip", "segmenting: chip", "objects larger than a chip", "tracing polygons",
            "writing the GeoPackage", "done")
    assert feedback.stages[-1] == "done" and all(stage.startswith(said) for stage in feedback.stages), feedback.stages
    assert len(feedback.stages) > 1, "the stages on the way are shown, not only the end"


def _read_only(folder, on: bool) -> None:
    """Make ``folder`` unwritable (or writable again): by its mode, or for root, whom modes do not stop, by the
    immutable attribute (skips where the file system has none)."""
    if os.geteuid() != 0:
        folder.chmod(0o500 if on else 0o700)
    elif subprocess.run(["chattr", "+i" if on else "-i", str(folder)], capture_output=True).returncode and on:
        pytest.skip("root can write to any folder, and this file system has no immutable attribute")


@pytest.mark.parametrize("where", ["read-only folder", "missing folder", "a GeoPackage in a read-only folder",
                                   "an ogr: URI into a read-only folder"])
def test_segment_points_refuses_an_output_it_cannot_write_before_the_engine_runs(plugin, scene, tmp_path, where):
    """A GeoPackage writes a journal beside itself, so a writable file in a read-only folder is refused too."""
    import processing

    from .test_dock import _foreign_geopackage, _rows

    folder = tmp_path / ("gone" if where == "missing folder" else "ro")
    target = folder / "out.gpkg"
    if where != "missing folder":
        folder.mkdir()
        if "GeoPackage" in where:
            _foreign_geopackage(target)
        _read_only(folder, True)
    files = sorted(p.name for p in folder.iterdir()) if folder.exists() else None
    before = _rows(target) if target.exists() else None
    destination = f"ogr:dbname='{target}' table=\"instances\" (geom)" if "ogr" in where else str(target)
    feedback = _Feedback()
    try:
        with pytest.raises(QgsProcessingException) as error:
            processing.run("pointsam:segmentpoints", {"RASTER": scene["raster"], "POINTS": scene["points"],
                                                      "INSTANCES": destination, "BOXES": TEMPORARY,
                                                      "BBOXES": TEMPORARY}, feedback=feedback)
    finally:
        if folder.exists():
            _read_only(folder, False)
    message = str(error.value)
    assert message.startswith("Instances: ") and "choose another output" in message and "\n" not in message
    assert not feedback.stages and not feedback.seen, "refused before the engine was asked"
    assert (sorted(p.name for p in folder.iterdir()) if folder.exists() else None) == files  # before reading it
    assert (_rows(target) if target.exists() else None) == before


def test_model_offers_the_models_the_engine_last_listed_without_asking_it(plugin):
    from qgis.core import QgsApplication, QgsProcessingContext
    from qgis.gui import QgsGui, QgsProcessingGui

    from qgis_plugin import catalog

    catalog.remember_models({"loaded": {"label": "pointsam-tiny@9238", "sha256": "9238"}, "adapters": [],
                             "available": [{"name": "pointsam-tiny", "path": "/p/tiny.pt", "sha256": "9238"}],
                             "catalog": [{"name": "vit_b", "installed": True, "path": "/m/b.pth"},
                                         {"name": "vit_h", "installed": False, "path": None}]})
    try:
        for name in ("segmentpoints", "pointstoboxes", "finetune"):
            model = QgsApplication.processingRegistry().algorithmById(f"pointsam:{name}").parameterDefinition("MODEL")
            assert model.metadata()["widget_wrapper"]["value_hints"] == ["engine default", "pointsam-tiny", "vit_b"]
            assert model.defaultValue() == "engine default", name
        wrapper = QgsGui.processingGuiRegistry().createParameterWidgetWrapper(model, QgsProcessingGui.WidgetType.Standard)
        combo = wrapper.createWrappedWidget(QgsProcessingContext())
        wrapper.setParameterValue(model.defaultValue(), QgsProcessingContext())
        assert [combo.itemText(i) for i in range(combo.count())] == ["", "engine default", "pointsam-tiny", "vit_b"]
        assert wrapper.parameterValue() == "engine default", "the dialog offers the list, the default chosen"
    finally:
        catalog.forget()


@pytest.mark.parametrize("bands, said", [("a,b", "Bands: give band numbers separated by commas, e.g. 3,2,1"),
                                         ("3,2", "Bands")])
def test_bad_bands_are_said_in_the_words_of_the_dialog(plugin, scene, bands, said):
    import processing

    with pytest.raises(QgsProcessingException) as error:
        processing.run("pointsam:segmentpoints", {"RASTER": scene["raster"], "POINTS": scene["points"], "BANDS": bands,
                                                  "INSTANCES": TEMPORARY, "BOXES": TEMPORARY, "BBOXES": TEMPORARY})
    message = str(error.value)
    assert message.startswith(said) and "--bands" not in message and "invalid literal" not in message, message


def test_segment_points_regularizes_buildings_when_asked(plugin, scene):
    import processing

    result = processing.run("pointsam:segmentpoints", {"RASTER": scene["raster"], "POINTS": scene["points"],
                                                       "REGULARIZE": 1, "INSTANCES": TEMPORARY,
                                                       "BOXES": TEMPORARY, "BBOXES": TEMPORARY})
    features = list(result["INSTANCES"].getFeatures())
    assert features and all(f["regularized"] for f in features)
    assert all(0 < f["iou_to_mask"] <= 1 for f in features)
