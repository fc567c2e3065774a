"""The Processing algorithms beside Segment points, run with ``processing.run`` against the real engine:
Points to boxes, Fine-tune from points (then its adapter in Segment points), Evaluate, and Segment points
chained into Evaluate in a graphical-modeler model."""

from __future__ import annotations

import json

import pytest
from qgis.core import (QgsProcessing, QgsProcessingException, QgsProcessingFeedback, QgsProcessingModelAlgorithm,
                       QgsProcessingModelChildAlgorithm, QgsProcessingModelChildParameterSource,
                       QgsProcessingModelOutput, QgsProcessingModelParameter, QgsProcessingParameterFeatureSource,
                       QgsProcessingParameterRasterLayer)

from .conftest import feature_count as _count

TEMPORARY = "TEMPORARY_OUTPUT"


class _Feedback(QgsProcessingFeedback):
    """Records progress; cancels once the job has reported some, when asked to."""

    def __init__(self, cancel_when_started: bool = False):
        super().__init__()
        self.seen, self.cancel_when_started = [], cancel_when_started
        self.progressChanged.connect(self._record)

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

    feedback = _Feedback()
    adapter = tmp_path / "region.adapter.pt"
    result = processing.run("pointsam:finetune", {"RASTER": scene["raster"], "POINTS": scene["points"], "STEPS": 2,
                                                  "VAL_FRACTION": 0, "RANK": 2, "OUTPUT": str(adapter)},
                            feedback=feedback)
    assert result["OUTPUT"] == str(adapter) and adapter.is_file()
    assert feedback.seen and feedback.seen[-1] == 100, "progress follows the train job to its end"
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
