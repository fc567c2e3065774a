"""An engine already running (``pointsam serve`` started by someone else): the plugin connects to it by
URL and token or through its connection file, spawns nothing, and says in one line what to do when it
does not answer or refuses the token."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from qgis.core import QgsProcessingException, QgsSettings

from .conftest import ROOT, engine_pid_alive, engine_python, wait_until_gone


@pytest.fixture(scope="module")
def server(plugin, tmp_path_factory):
    """A ``pointsam serve`` the plugin did not start: its process, announcement and connection file."""
    connection_file = tmp_path_factory.mktemp("served") / "serve.json"
    proc = subprocess.Popen([engine_python(), "-m", "pointsam_engine.cli", "serve", "--watch-parent", "--port", "0",
                             "--cache-mb", "64", "--connection-file", str(connection_file)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    yield proc, json.loads(proc.stdout.readline()), connection_file
    proc.terminate()
    proc.wait(60)
    proc.stdin.close()
    proc.stdout.close()


@pytest.fixture
def served(server, monkeypatch):
    """The server, with no POINTSAM_ENGINE_PYTHON (which would win over the settings); settings cleared after."""
    from qgis_plugin import settings

    monkeypatch.delenv("POINTSAM_ENGINE_PYTHON")
    yield server
    for key in (settings.KEY_URL, settings.KEY_TOKEN, settings.KEY_CONNECTION_FILE):
        QgsSettings().remove(key)
    settings.stop_engine()


def _segment(scene):
    import processing

    return processing.run("pointsam:segmentpoints", {"RASTER": scene["raster"], "POINTS": scene["points"],
                                                     "INSTANCES": "TEMPORARY_OUTPUT", "BOXES": "TEMPORARY_OUTPUT",
                                                     "BBOXES": "TEMPORARY_OUTPUT"})


def _engine_children() -> set:
    """Pids of this process's children that run the engine."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile
        if ppid == os.getpid() and b"pointsam_engine" in command:
            pids.add(int(stat.parent.name))
    return pids


def _jobs(info) -> list:
    from qgis_plugin.client import EngineClient

    return EngineClient(info["url"], info["token"]).request("GET", "/v1/jobs")["jobs"]


def test_a_running_engine_is_used_by_url_or_connection_file_and_nothing_is_spawned(served, scene):
    from qgis_plugin import settings
    from qgis_plugin.engine import RemoteEngine

    proc, info, connection_file = served
    QgsSettings().setValue(settings.KEY_URL, info["url"])
    QgsSettings().setValue(settings.KEY_TOKEN, info["token"])
    result = _segment(scene)
    assert result["INSTANCES"].featureCount() > 0
    assert isinstance(settings.engine(), RemoteEngine)
    assert [(job["kind"], job["state"]) for job in _jobs(info)] == [("segment", "succeeded")]
    assert _engine_children() == {proc.pid}, "the plugin started an engine of its own"

    QgsSettings().remove(settings.KEY_URL)
    QgsSettings().setValue(settings.KEY_CONNECTION_FILE, str(connection_file))
    _segment(scene)
    assert [job["kind"] for job in _jobs(info)] == ["segment", "segment"]
    assert _engine_children() == {proc.pid}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("case", ["wrong token", "dead url", "missing connection file"])
def test_an_engine_that_does_not_answer_gives_one_line_naming_it_and_the_fix(served, scene, tmp_path, case):
    from qgis_plugin import settings

    proc, info, _ = served
    dead = f"http://127.0.0.1:{_free_port()}"
    missing = str(tmp_path / "nowhere.json")
    config, expected = {
        "wrong token": ({settings.KEY_URL: info["url"], settings.KEY_TOKEN: "x" * 43},
                        [info["url"], "refused the token", "pointsam/engine_token"]),
        "dead url": ({settings.KEY_URL: dead, settings.KEY_TOKEN: info["token"]},
                     [dead, "does not answer", "start `pointsam serve`", "clear the setting pointsam/engine_url"]),
        "missing connection file": ({settings.KEY_CONNECTION_FILE: missing},
                                    [missing, f"pointsam serve --connection-file {missing}",
                                     "pointsam/engine_connection_file"]),
    }[case]
    for key, value in config.items():
        QgsSettings().setValue(key, value)
    with pytest.raises(QgsProcessingException) as error:
        _segment(scene)
    message = str(error.value)
    assert all(part in message for part in expected), message
    assert "\n" not in message and "Traceback" not in message
    assert _engine_children() == {proc.pid}, "the plugin must not start or restart an engine it does not own"


def test_an_engine_exits_when_the_qgis_that_started_it_is_killed(qgis_app):
    """kill -9 runs no cleanup in QGIS: the engine notices by itself (its stdin pipe closes, its parent is gone)."""
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from qgis_plugin.engine import EngineProcess; "
            "engine = EngineProcess(sys.argv[2]); engine.client(); print(engine.pid, flush=True); time.sleep(900)")
    parent = subprocess.Popen(["/usr/bin/python3", "-c", code, str(ROOT), engine_python()], stdout=subprocess.PIPE,
                              text=True)
    try:
        pid = int(parent.stdout.readline())
        assert engine_pid_alive(pid)
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
    assert wait_until_gone([pid]) == [], "the engine outlived the killed QGIS"


def test_threads_asking_for_the_engine_at_once_start_one_engine(qgis_app, no_engine_outlives_the_suite):
    """Worker threads (QgsTasks) may all need the engine at the same moment: the first starts it, the others wait."""
    from qgis_plugin.engine import EngineProcess

    engine = EngineProcess(engine_python())
    started = len(no_engine_outlives_the_suite)
    barrier = threading.Barrier(4)
    urls = []

    def ask():
        barrier.wait()
        urls.append(engine.client().url)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert len(urls) == 4 and len(set(urls)) == 1
        assert len(no_engine_outlives_the_suite) == started + 1, "a second engine was started"
    finally:
        engine.stop()


def test_a_stopped_or_failed_engine_leaves_no_temporary_folder(qgis_app, tmp_path, monkeypatch):
    """The engine's folder (connection file, engine.log) lives as long as the engine: readable while it runs,
    removed once it has exited, also when it restarts or never came up. An engine that died on its own leaves
    its log, with its exit status, where the message about it says."""
    import tempfile

    from qgis_plugin.engine import EngineProcess, crash_log
    from qgis_plugin.errors import EngineMissingError, EngineUnavailableError

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where mkdtemp puts the engine's folder
    engine = EngineProcess(engine_python())
    try:
        client = engine.client()
        first, pid = engine.log_file, engine.pid
        assert first.parent.parent == tmp_path and first.is_file(), "the log is there while the engine runs"
        assert first.parent.name.startswith(f"pointsam-plugin-{os.getpid()}-"), "named by the QGIS that started it"
        with open(first, "a") as log:
            log.write("Traceback (most recent call last): the engine's last words\n")
        os.kill(pid, 9)  # the engine dies: the next call starts another one, in a folder of its own
        assert wait_until_gone([pid]) == []
        with pytest.raises(EngineUnavailableError) as failed:
            client.health()
        assert str(crash_log()) in str(failed.value)
        kept = crash_log().read_text()
        assert "the engine's last words" in kept and f"(pid {pid}) exited with status -9" in kept
        engine.client()
        assert not first.parent.exists(), "the dead engine's folder was removed when it was replaced"
        assert engine.log_file.is_file()
    finally:
        engine.stop()
    assert list(tmp_path.iterdir()) == [crash_log()], "the stopped engine's folder is left behind"
    assert engine.log_file is None
    crash_log().unlink()

    with pytest.raises(EngineMissingError):
        EngineProcess("/usr/bin/python3").client()  # QGIS's own Python: no engine there, it never comes up
    assert list(tmp_path.iterdir()) == [], "an engine that did not start left its folder or a crash log"


def test_an_engine_that_stops_answering_as_it_exits_leaves_its_log(qgis_app, tmp_path, monkeypatch):
    """A dying engine's socket closes a moment before its exit status exists: the refused call that finds it
    waits for that status and keeps the log all the same."""
    import sys
    import tempfile

    from qgis_plugin.client import EngineClient
    from qgis_plugin.engine import EngineProcess, crash_log
    from qgis_plugin.errors import EngineUnavailableError

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    engine = EngineProcess(sys.executable)
    engine._folder = tempfile.mkdtemp()
    engine.log_file.write_text("MemoryError: the engine's last words\n")
    with socket.socket() as unused:  # a port nobody listens on: refused, as once the engine's socket is closed
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    engine._proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3); raise SystemExit(3)"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    engine._client = EngineClient(f"http://127.0.0.1:{port}", "token",
                                  on_unavailable=lambda: engine._keep_log_if_dead(engine._proc))
    try:
        with pytest.raises(EngineUnavailableError):
            engine._client.health()
        kept = crash_log().read_text()
        assert "the engine's last words" in kept and "exited with status 3" in kept
    finally:
        engine.stop()
    assert list(tmp_path.iterdir()) == [crash_log()]


class _RecordingIface:
    """An iface with a real message bar that records the menu entries and options pages the plugin adds."""

    def __init__(self):
        from qgis.gui import QgsMessageBar

        self.bar, self.calls = QgsMessageBar(), []

    def messageBar(self):  # noqa: N802 (QGIS's name)
        return self.bar

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, *args))


def test_no_engine_messages_offer_set_up_engine_and_the_options_page_sets_the_engine(qgis_app, monkeypatch):
    from qgis.PyQt.QtWidgets import QPushButton

    from qgis_plugin import settings
    from qgis_plugin.errors import EngineMissingError
    from qgis_plugin.gui.settings_page import SettingsPage
    from qgis_plugin.plugin import PointSamPlugin

    python = engine_python()
    monkeypatch.delenv("POINTSAM_ENGINE_PYTHON", raising=False)
    saved = settings.configured_python()
    settings.set_value(settings.KEY_PYTHON, "")
    iface = _RecordingIface()
    plugin = PointSamPlugin(iface)
    plugin._add_setup()
    try:
        assert ("addPluginToMenu", "PointSAM", plugin.setup_action) in iface.calls
        assert plugin.setup_action.text() == "Set up engine…"
        assert ("registerOptionsWidgetFactory", plugin.options_factory) in iface.calls
        with pytest.raises(EngineMissingError) as error:
            settings.engine()
        message = str(error.value)
        assert "Set up engine… (menu Plugins > PointSAM)" in message and "Settings > Options > PointSAM" in message
        opened = []
        plugin.show_setup = lambda: opened.append("setup")
        plugin._warn(message)
        plugin._warn("band 9 does not exist; the raster has 3 bands")  # not about the engine: no button
        buttons = [b for b in iface.bar.findChildren(QPushButton) if b.text() == "Set up engine…"]
        assert len(buttons) == 1
        buttons[0].click()
        assert opened == ["setup"]

        page = SettingsPage(None, plugin.show_setup)
        page.fields[settings.KEY_PYTHON].setText("/nowhere/bin/python")
        assert "/nowhere/bin/python does not exist" in page.python_state.text()
        page.fields[settings.KEY_PYTHON].setText(python)
        page.fields[settings.KEY_ARGS].setText("--cache-mb 64")
        page.fields[settings.KEY_OUTPUT_ROOT].setText("/data/gis")
        assert page.precision.currentData() == "auto"  # the engine's default, first
        page.precision.setCurrentIndex(page.precision.findData("bf16"))
        assert page.python_state.text() == ""
        page.apply()
        assert settings.engine_choice() == ("process", python, "--cache-mb", "64", "--output-root", "/data/gis",
                                            "--precision", "bf16")
        assert SettingsPage(None, plugin.show_setup).precision.currentData() == "bf16"  # the page shows the setting
        settings.set_value(settings.KEY_ARGS, "--precision int8")  # the user's own flag wins over the page's choice
        assert settings.engine_args() == ("--precision", "int8", "--output-root", "/data/gis")
    finally:
        settings.set_value(settings.KEY_PYTHON, saved)
        settings.set_value(settings.KEY_ARGS, "")
        settings.set_value(settings.KEY_OUTPUT_ROOT, "")
        settings.set_value(settings.KEY_PRECISION, "")
        plugin.unload()
