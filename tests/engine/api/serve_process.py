"""``pointsam serve`` as a real uvicorn process on a loopback port, called over HTTP with httpx; helpers
to click a generated scene and wait for a job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import geopandas as gpd
import httpx

STARTUP_SECONDS = 120


class Server:
    """A ``pointsam serve`` child process and an authorised client for it."""

    def __init__(self, folder: Path, *extra: str):
        self.connection_file = folder / "serve.json"
        # a file, not a pipe nobody reads: a full pipe (Dask's workers log there) stalls whoever writes to it next
        self.log = folder / "serve.log"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        # --watch-parent with a stdin pipe: a test run that crashes takes its server with it
        with self.log.open("w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "pointsam_engine.cli", "serve", "--watch-parent",
                                          "--port", "0", "--cache-mb", "64", "--connection-file",
                                          str(self.connection_file), *extra], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        self.info = json.loads(self._first_line())
        self.url, self.token = self.info["url"], self.info["token"]
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=120)

    def _first_line(self) -> str:
        box = {}
        reader = threading.Thread(target=lambda: box.setdefault("line", self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(STARTUP_SECONDS)
        if not box.get("line"):
            self.proc.kill()
            raise RuntimeError(f"pointsam serve did not start: {self.log.read_text()}")
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # drained: never a full pipe
        return box["line"]

    def stop(self) -> int:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        finally:
            self.proc.stdin.close()


def scene_click(scene_paths, index=0):
    """The ``index``-th click of a generated scene: its point, the true object under it, and their CRS."""
    pts = gpd.read_file(scene_paths["points"])
    truth = gpd.read_file(scene_paths["truth"])
    return pts.geometry.iloc[index], truth.geometry.iloc[index], pts.crs


def wait_for(client, job_id, until, seconds=120):
    """Poll a job until ``until(view)``; returns every view seen (a guard against hanging, not a speed limit)."""
    seen = []
    deadline = time.time() + seconds
    while time.time() < deadline:
        view = client.get(f"/v1/jobs/{job_id}").json()
        seen.append(view)
        if until(view):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach the state in {seconds}s: {seen[-1]}")


def segment_report(client, scene, output, **choice) -> dict:
    """Run a segment job on ``scene`` into ``output`` (``choice``: model, adapter...) and return its report."""
    job = client.post("/v1/jobs/segment", json={"raster": str(scene["raster"]), "points": str(scene["points"]),
                                                "output": str(output), **choice})
    assert job.status_code == 202, job.text
    final = wait_for(client, job.json()["id"], lambda v: v["state"] in ("succeeded", "failed", "cancelled"))[-1]
    assert final["state"] == "succeeded", final
    return final["result"]["report"]
