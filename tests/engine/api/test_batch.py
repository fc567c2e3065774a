"""``POST /v1/jobs/batch`` on a ``pointsam serve`` process: bad input answers 4xx in one line at once; a batch
runs to one merged GeoPackage with progress."""

from __future__ import annotations

import geopandas as gpd

from tests.engine.api.serve_process import wait_for
from tests.engine.batch.scenes import survey


def test_a_batch_job_merges_the_rasters_and_bad_input_is_refused_at_once(server, tmp_path):
    data = survey(tmp_path / "survey", size=512, seed=3)
    output = tmp_path / "out.gpkg"
    body = {"rasters": [str(data["tiles"][0].parent)], "points": str(data["points"]), "output": str(output),
            "workers": 1}
    refused = server.client.post("/v1/jobs/batch", json={**body, "rasters": [str(tmp_path / "none")]})
    assert refused.status_code == 422 and "does not exist" in refused.json()["message"]
    assert "\n" not in refused.json()["message"]
    job = server.client.post("/v1/jobs/batch", json=body)
    assert job.status_code == 202, job.text
    views = wait_for(server.client, job.json()["id"], lambda v: v["state"] in ("succeeded", "failed", "cancelled"))
    assert views[-1]["state"] == "succeeded", views[-1]
    assert any(v["stage"].startswith("task") for v in views) or views[-1]["progress"] == 1.0
    inst = gpd.read_file(output, layer="instances")
    assert inst["point_fid"].is_unique and inst["source"].nunique() == 4
