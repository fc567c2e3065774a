"""Train jobs over HTTP (a ``pointsam serve`` process; training is installed in the test environment)."""

from __future__ import annotations

from tests.engine.api.serve_process import wait_for


def test_train_job_refuses_block_numbers_no_sam_has(server, tmp_path):
    """A range like 0-99999999999 would be expanded whole (the server ran out of memory under fuzzing)."""
    refused = server.client.post("/v1/jobs/train", json={"rasters": ["/nowhere.tif"], "points": ["/nowhere.gpkg"],
                                                         "output": str(tmp_path / "a.adapter.pt"), "blocks": "0-1000"})
    assert refused.status_code == 422 and refused.json()["error"] == "InvalidRequest"
    assert refused.json()["message"].startswith("blocks:")


def test_train_job_writes_an_adapter_the_server_can_report(server, scene, tmp_path):
    adapter = tmp_path / "region.adapter.pt"
    bad = server.client.post("/v1/jobs/train", json={"rasters": [str(scene["raster"])], "points": ["/nowhere.gpkg"],
                                                     "output": str(adapter)})
    assert bad.status_code == 422 and "/nowhere.gpkg does not exist" in bad.json()["message"]
    job = server.client.post("/v1/jobs/train", json={"rasters": [str(scene["raster"])], "points": [str(scene["points"])],
                                                     "output": str(adapter), "steps": 3, "val_fraction": 0,
                                                     "no_prototypes": True, "accelerator": "cpu"})
    assert job.status_code == 202, job.text
    seen = wait_for(server.client, job.json()["id"], lambda v: v["state"] in ("succeeded", "failed", "cancelled"), 300)
    assert seen[-1]["state"] == "succeeded", seen[-1]
    assert seen[-1]["result"]["output"] == str(adapter) and adapter.is_file()
    from pointsam_engine.sam.adapter import read_adapter

    base = read_adapter(adapter)["base"]
    assert server.info["model"].startswith(f"{base['name']}@{base['sha256'][:12]}"), "trained on the server's base model"
