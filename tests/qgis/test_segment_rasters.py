"""Processing "Segment points over many rasters" (``pointsam:segmentrasters``) against the real engine: tiles
that overlap and abut become one instance layer with a source field; progress is reported; a cancel stops the
engine's batch job and its Dask workers, and writes nothing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from qgis.core import QgsProcessingException, QgsProcessingFeedback, QgsVectorLayer

from .conftest import ROOT, engine_python

TEMPORARY = "TEMPORARY_OUTPUT"


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """Four tiles of a generated scene and its clicks, written by the engine's environment."""
    code = ("import json, sys; from tests.engine.batch.scenes import survey; "
            "print(json.dumps({k: [str(p) for p in v] if isinstance(v, list) else str(v) "
            "for k, v in survey(sys.argv[1], size=512, seed=3).items()}))")
    out = subprocess.run([engine_python(), "-c", code, str(tmp_path_factory.mktemp("survey"))], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


class _CancelOnProgress(QgsProcessingFeedback):
    """Records progress; cancels once the job has reported some (a task finished), as a user pressing Cancel."""

    def __init__(self):
        super().__init__()
        self.seen = []
        self.progressChanged.connect(self._record)

    def _record(self, value: float) -> None:
        self.seen.append(value)
        if value > 0:
            self.cancel()


def test_segment_points_over_many_rasters_merges_them_with_progress(plugin, survey, tmp_path):
    import processing

    seen = []
    feedback = QgsProcessingFeedback()
    feedback.progressChanged.connect(seen.append)
    target = str(tmp_path / "result.gpkg")
    result = processing.run("pointsam:segmentrasters", {"RASTERS": survey["tiles"], "POINTS": survey["points"],
                                                        "WORKERS": 1, "INSTANCES": target, "BOXES": TEMPORARY,
                                                        "BBOXES": TEMPORARY}, feedback=feedback)
    layer = QgsVectorLayer(f"{target}|layername=instances", "instances", "ogr")
    assert layer.isValid() and layer.featureCount() > 0
    fids = [f["point_fid"] for f in layer.getFeatures()]
    assert len(fids) == len(set(fids))
    assert len({f["source"] for f in layer.getFeatures()}) == 4
    assert seen and max(seen) == 100
    del layer, result


def _dask_workers(pid: int) -> list:
    """The pids of processes started by ``pid`` (at any depth) that run a Dask worker (multiprocessing spawn)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = (int(fields[1]), fields[0])
        except (OSError, IndexError, ValueError):
            continue

    def under(child: int) -> bool:
        while child in parents and child != pid:
            child = parents[child][0]
        return child == pid

    found = []
    for child, (_, state) in parents.items():
        if child != pid and state != "Z" and under(child):
            try:
                if b"spawn_main" in (Path("/proc") / str(child) / "cmdline").read_bytes():
                    found.append(child)
            except OSError:
                continue
    return found


def test_a_cancel_stops_the_engine_job_and_its_workers_and_writes_nothing(plugin, survey, tmp_path):
    import processing

    from qgis_plugin import settings

    target = tmp_path / "cancelled.gpkg"
    feedback = _CancelOnProgress()
    with pytest.raises(QgsProcessingException, match="cancelled; nothing was written") as raised:
        processing.run("pointsam:segmentrasters", {"RASTERS": survey["tiles"], "POINTS": survey["points"],
                                                   "WORKERS": 1, "INSTANCES": str(target), "BOXES": TEMPORARY,
                                                   "BBOXES": TEMPORARY}, feedback=feedback)
    assert "--resume" not in str(raised.value)  # the work folder went with the algorithm's temporary folder
    assert feedback.isCanceled() and max(feedback.seen) < 100
    assert not target.exists()
    engine = settings.engine()
    jobs = [job for job in engine.client().request("GET", "/v1/jobs")["jobs"] if job["kind"] == "batch"]
    assert jobs[-1]["state"] == "cancelled" and jobs[-1]["result"] is None
    assert jobs[-1]["progress"] < 0.92, "stopped before the merge: the pending tasks were cancelled"
    assert engine.pid and not _dask_workers(engine.pid), "the engine's LocalCluster is closed with the job"
