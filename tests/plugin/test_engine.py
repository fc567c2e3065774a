"""The engine's temporary folders: named by the QGIS process that started the engine, swept once it has exited."""

import os
import subprocess
import sys

import pytest

from qgis_plugin.engine import FOLDER_PREFIX, sweep_stale_folders


@pytest.mark.skipif(os.name != "posix", reason="pids are asked about on POSIX systems only")
def test_folders_of_exited_qgis_processes_are_swept_and_the_others_kept(tmp_path):
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    stale = tmp_path / f"{FOLDER_PREFIX}{exited.pid}-k2j9"  # what qgis_process leaves
    stale.mkdir()
    (stale / "engine.log").write_text("")
    running = tmp_path / f"{FOLDER_PREFIX}{os.getpid()}-x7q1"  # this process's own engine
    running.mkdir()
    unnamed = tmp_path / f"{FOLDER_PREFIX}abc123"  # no pid in the name (an older plugin's): not ours to judge
    unnamed.mkdir()
    other = tmp_path / f"other-{exited.pid}"
    other.mkdir()
    huge = tmp_path / f"{FOLDER_PREFIX}{'9' * 30}-x"  # no pid can be that: kept, and no error
    huge.mkdir()
    sweep_stale_folders(str(tmp_path))
    assert not stale.exists()
    assert running.exists() and unnamed.exists() and other.exists() and huge.exists()
