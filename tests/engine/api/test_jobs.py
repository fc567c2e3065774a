"""The job queue over HTTP (a ``pointsam serve`` process): a cancelled job writes nothing."""

from __future__ import annotations

from tests.engine.api.serve_process import wait_for
from tests.engine.test_output import sha256, user_geopackage


def test_cancel_mid_job_leaves_no_output(server, long_job_inputs, tmp_path):
    raster, points = long_job_inputs
    output = tmp_path / "cancelled.gpkg"
    job = server.client.post("/v1/jobs/segment", json={"raster": str(raster), "points": str(points),
                                                       "output": str(output)}).json()
    wait_for(server.client, job["id"], lambda v: v["state"] == "running" and v["progress"] > 0.06)
    assert server.client.delete(f"/v1/jobs/{job['id']}").status_code == 200
    final = wait_for(server.client, job["id"], lambda v: v["state"] in ("succeeded", "failed", "cancelled"))[-1]
    assert final["state"] == "cancelled", final
    assert final["progress"] < 1.0
    assert not output.exists() and not list(tmp_path.glob(".*partial*"))
    assert server.client.get("/v1/jobs/nope").status_code == 404


def test_a_cancelled_job_leaves_a_users_geopackage_as_it_was(server, long_job_inputs, tmp_path):
    raster, points = long_job_inputs
    output = user_geopackage(tmp_path / "project.gpkg")
    digest, listing = sha256(output), sorted(p.name for p in tmp_path.iterdir())
    job = server.client.post("/v1/jobs/segment", json={"raster": str(raster), "points": str(points),
                                                       "output": str(output)}).json()
    wait_for(server.client, job["id"], lambda v: v["state"] == "running" and v["progress"] > 0.06)
    server.client.delete(f"/v1/jobs/{job['id']}")
    final = wait_for(server.client, job["id"], lambda v: v["state"] in ("succeeded", "failed", "cancelled"))[-1]
    assert final["state"] == "cancelled", final
    assert sha256(output) == digest and sorted(p.name for p in tmp_path.iterdir()) == listing
