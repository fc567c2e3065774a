"""``pointsam serve`` (``api/server.py``): the announcement and its connection file, a clean stop that cancels the
running job, no remote host without a token, and ``--watch-parent``: an engine whose starter goes away (even by
kill -9) stops by itself."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from tests.conftest import write_points, write_raster
from tests.engine.api.serve_process import Server, wait_for
from tests.engine.test_output import sha256, user_geopackage

STARTUP_SECONDS = 120
EXIT_SECONDS = 60  # a bound on the wait, not a speed requirement

SERVE = [sys.executable, "-m", "pointsam_engine.cli", "serve", "--watch-parent", "--port", "0", "--cache-mb", "16"]

# A stand-in for QGIS: starts the engine with stdin as given (fd ``argv[2]``), reports its pid and
# announcement, then waits to be killed.
PARENT = """
import os, subprocess, sys
serve = sys.argv[3:] + ["--connection-file", sys.argv[1]]
child = subprocess.Popen(serve, stdin=int(sys.argv[2]), stdout=subprocess.PIPE, text=True)
os.close(int(sys.argv[2]))
print(child.pid, flush=True)
print(child.stdout.readline().strip(), flush=True)
sys.stdin.readline()
"""


def _line(stream, seconds: float = STARTUP_SECONDS) -> str:
    box = {}
    reader = threading.Thread(target=lambda: box.setdefault("line", stream.readline()), daemon=True)
    reader.start()
    reader.join(seconds)
    assert box.get("line"), "no line from the process in time"
    return box["line"].strip()


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie nobody has reaped yet counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _ends(pid: int, seconds: float = EXIT_SECONDS) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_the_engine_stops_when_its_parent_is_killed(tmp_path):
    """The engine's stdin stays open (this test holds the pipe), so only the parent pid tells it the parent died."""
    connection = tmp_path / "serve.json"
    read_end, write_end = os.pipe()
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(connection), str(read_end), *SERVE],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, pass_fds=(read_end,))
    os.close(read_end)
    engine_pid = None
    try:
        engine_pid = int(_line(parent.stdout))
        announced = json.loads(_line(parent.stdout))
        assert announced["pid"] == engine_pid and connection.exists()
        parent.kill()
        parent.wait(EXIT_SECONDS)
        assert _ends(engine_pid), "the engine outlived its killed parent"
        assert not connection.exists(), "the engine did not stop cleanly: its connection file is left"
    finally:
        os.close(write_end)
        if parent.poll() is None:
            parent.kill()
        if engine_pid and _alive(engine_pid):
            os.kill(engine_pid, signal.SIGKILL)


def test_the_engine_stops_when_its_stdin_closes_cancelling_its_job(tmp_path):
    rng = np.random.default_rng(0)
    raster = write_raster(tmp_path / "noise.tif", rng.integers(0, 255, (3, 3072, 3072), dtype=np.uint8))
    points = write_points(tmp_path / "grid.gpkg", [(500000.0 + 0.5 * c, 4000000.0 - 0.5 * r)
                                                    for r in range(100, 3072, 200) for c in range(100, 3072, 200)])
    output = user_geopackage(tmp_path / "project.gpkg")
    digest = sha256(output)
    connection = tmp_path / "serve.json"
    engine = subprocess.Popen([*SERVE, "--connection-file", str(connection)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        info = json.loads(_line(engine.stdout))
        with httpx.Client(base_url=info["url"], headers={"Authorization": f"Bearer {info['token']}"}, timeout=60) as client:
            job = client.post("/v1/jobs/segment", json={"raster": str(raster), "points": str(points),
                                                        "output": str(output)}).json()
            deadline = time.monotonic() + STARTUP_SECONDS
            while client.get(f"/v1/jobs/{job['id']}").json()["progress"] <= 0.06:
                assert time.monotonic() < deadline, "the job did not start"
                time.sleep(0.05)
        engine.stdin.close()
        assert engine.wait(EXIT_SECONDS) == 0
    finally:
        if engine.poll() is None:
            engine.kill()
    assert not connection.exists()
    assert sha256(output) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.gpkg", "noise.tif", "project.gpkg"]


def test_an_engine_whose_job_hangs_still_exits_after_its_parent_went_away():
    """A job stuck in a library call (a deadlocked fork) keeps the process alive after the clean stop: the watch
    ends it anyway after the grace period, so no orphan is left."""
    code = ("import threading, time; from pointsam_engine.api import server; server.ORPHAN_GRACE_SECONDS = 0.5; "
            "server.watch_parent_process(lambda: None); "
            "threading.Thread(target=time.sleep, args=(3600,)).start()")  # a non-daemon thread that never ends
    proc = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL, timeout=120,
                          cwd=Path(__file__).resolve().parents[3])
    assert proc.returncode == 3


def test_announcement_matches_connection_file_readable_by_user_only(server):
    assert server.info["url"].startswith("http://127.0.0.1:")
    assert server.info["pid"] == server.proc.pid
    on_disk = json.loads(server.connection_file.read_text())
    assert {k: on_disk[k] for k in ("url", "token", "pid")} == {k: server.info[k] for k in ("url", "token", "pid")}
    assert stat.S_IMODE(server.connection_file.stat().st_mode) == 0o600


def test_shutdown_cancels_the_running_job(tmp_path, long_job_inputs):
    raster, points = long_job_inputs
    srv = Server(tmp_path)
    output = tmp_path / "never.gpkg"
    job = srv.client.post("/v1/jobs/segment", json={"raster": str(raster), "points": str(points),
                                                    "output": str(output)}).json()
    wait_for(srv.client, job["id"], lambda v: v["state"] == "running" and v["progress"] > 0.06)
    assert srv.stop() == 0
    assert not output.exists() and not list(tmp_path.glob(".*partial*"))
    assert not srv.connection_file.exists()


def test_remote_host_needs_allow_remote_and_a_token(tmp_path):
    from click.testing import CliRunner

    from pointsam_engine.cli import main

    refused = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--connection-file", str(tmp_path / "c.json")])
    assert refused.exit_code == 2 and "--allow-remote" in refused.output
    no_token = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--allow-remote",
                                         "--connection-file", str(tmp_path / "c.json")])
    assert no_token.exit_code == 2 and "--token" in no_token.output
    assert not (tmp_path / "c.json").exists()


def test_served_connections_send_without_waiting_for_acks():
    """Connections accepted on the engine's socket get TCP_NODELAY (else each response's body waits ~40 ms for
    the client's delayed ACK of its headers)."""
    import asyncio
    import socket

    from pointsam_engine.api.server import bind

    async def accepted_nodelay() -> int:
        sock, seen = bind("127.0.0.1", 0), asyncio.get_running_loop().create_future()

        def connected(reader, writer):
            seen.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(connected, sock=sock)
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        try:
            return await asyncio.wait_for(seen, 10)
        finally:
            writer.close()
            server.close()

    assert asyncio.run(accepted_nodelay()) != 0
