"""``pointsam models pull|verify|remove`` against a loopback HTTP server serving a small file with a known sha256
(:mod:`tests.engine.checkpoint_server`; the ``file_server`` fixture swaps vit_b's catalogue entry for that file)."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from pointsam_engine import catalog, download
from pointsam_engine.catalog import CATALOG
from pointsam_engine.cli import main
from pointsam_engine.errors import Cancelled, ModelError
from tests.engine.checkpoint_server import FILE, PAYLOAD, part_file, visible_files


def test_pull_downloads_verifies_and_installs(file_server, models_dir):
    reports = []
    result = download.pull("vit_b", progress=lambda fraction, stage: reports.append(fraction))
    assert result == {"name": "vit_b", "path": str(models_dir / FILE), "sha256": hashlib.sha256(PAYLOAD).hexdigest(),
                      "downloaded": True}
    assert (models_dir / FILE).read_bytes() == PAYLOAD
    assert not part_file(models_dir).exists()
    assert file_server.ranges == [None]
    assert reports == sorted(reports) and reports[-1] == 1.0 and len(reports) > 2
    assert download.state(CATALOG["vit_b"], models_dir / FILE) == download.VERIFIED


def test_pull_resumes_a_partial_download_with_a_range_request(file_server, models_dir):
    models_dir.mkdir()
    part_file(models_dir).write_bytes(PAYLOAD[:1_234_567])
    download.pull("vit_b")
    assert file_server.ranges == ["bytes=1234567-"]
    assert file_server.lengths == [len(PAYLOAD) - 1_234_567]
    assert (models_dir / FILE).read_bytes() == PAYLOAD


def test_pull_starts_over_when_the_server_ignores_range(file_server, models_dir):
    models_dir.mkdir()
    part_file(models_dir).write_bytes(b"x" * 1000)  # appending the rest to it would fail the sha256
    file_server.ignore_range = True
    download.pull("vit_b")
    assert file_server.ranges == ["bytes=1000-"]
    assert (models_dir / FILE).read_bytes() == PAYLOAD


def test_a_corrupted_download_is_refused_and_leaves_nothing(file_server, models_dir):
    file_server.payload = PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 1])
    with pytest.raises(ModelError, match="not the official") as refused:
        download.pull("vit_b")
    assert "\n" not in str(refused.value) and "nothing was installed" in str(refused.value)
    assert visible_files(models_dir) == []
    assert download.installed_path("vit_b") is None


def test_a_dropped_connection_keeps_the_partial_file_and_the_next_pull_resumes(file_server, models_dir):
    file_server.drop_at = 1_500_000
    with pytest.raises(download.DownloadError) as dropped:
        download.pull("vit_b")
    message = str(dropped.value)
    assert "\n" not in message and str(models_dir) in message and "kept for the next pull" in message
    assert part_file(models_dir).stat().st_size == 1_500_000
    assert not (models_dir / FILE).exists()
    file_server.drop_at = None
    download.pull("vit_b")
    assert file_server.ranges == [None, "bytes=1500000-"]
    assert (models_dir / FILE).read_bytes() == PAYLOAD


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_offline_says_so_in_one_line_naming_the_folder(file_server, models_dir, monkeypatch):
    monkeypatch.setenv(catalog.BASE_URL_VARIABLE, closed_port_url())
    with pytest.raises(download.DownloadError) as offline:
        download.pull("vit_b")
    message = str(offline.value)
    assert "\n" not in message and "offline" in message and f"into {models_dir} " in message
    assert visible_files(models_dir) == []


def test_cancel_keeps_the_partial_file_for_the_next_pull(file_server, models_dir):
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        download.pull("vit_b", progress=lambda fraction, stage: fraction > 0 and cancel.set(), cancel=cancel)
    kept = part_file(models_dir).stat().st_size
    assert 0 < kept < len(PAYLOAD) and not (models_dir / FILE).exists()
    download.pull("vit_b")
    assert file_server.ranges[-1] == f"bytes={kept}-"
    assert (models_dir / FILE).read_bytes() == PAYLOAD


def test_an_installed_and_verified_model_is_not_downloaded_again(file_server, models_dir):
    download.pull("vit_b")
    assert download.pull("vit_b")["downloaded"] is False
    assert file_server.ranges == [None]


def test_an_installed_file_that_differs_is_refused_and_kept(file_server, models_dir):
    models_dir.mkdir()
    (models_dir / FILE).write_bytes(b"the user's own file")
    with pytest.raises(ModelError, match="is not the official vit_b"):
        download.pull("vit_b")
    assert (models_dir / FILE).read_bytes() == b"the user's own file"
    assert file_server.ranges == []


def test_verify_tells_a_changed_file_and_remove_deletes_it(file_server, models_dir):
    path = Path(download.pull("vit_b")["path"])
    assert download.verify("vit_b")["ok"] is True
    recorded = path.stat().st_mtime_ns
    path.write_bytes(PAYLOAD[:-1] + b"!")  # same size, other bytes, later: the record no longer fits its mtime
    os.utime(path, ns=(recorded + 10**9, recorded + 10**9))
    assert download.state(CATALOG["vit_b"], path) == download.NOT_VERIFIED
    assert download.verify("vit_b")["ok"] is False
    assert download.state(CATALOG["vit_b"], path) == download.MISMATCH
    assert download.remove("vit_b") == {"name": "vit_b", "removed": str(path)}
    assert visible_files(models_dir) == []
    with pytest.raises(ModelError, match="not installed"):
        download.remove("vit_b")


# the command line: one line and exit 2 on bad input


def run_cli(*args):
    return CliRunner().invoke(main, ["models", *args])


def test_cli_pull_list_verify_remove(file_server, models_dir):
    pulled = run_cli("pull", "vit_b")
    assert pulled.exit_code == 0, pulled.output
    assert pulled.stdout == f"vit_b: downloaded and verified: {models_dir / FILE}\n"
    listing = run_cli("list").stdout.splitlines()
    assert listing[0] == f"model folder (downloads go here): {models_dir}"
    vit_b = next(line.split() for line in listing if line.startswith("vit_b"))
    assert vit_b[-2:] == ["verified", str(models_dir / FILE)]
    assert "not installed" in next(line for line in listing if line.startswith("vit_h"))
    assert run_cli("verify", "vit_b").exit_code == 0
    (models_dir / FILE).write_bytes(b"changed")
    changed = run_cli("verify", "vit_b")
    assert changed.exit_code == 1 and len(changed.stderr.splitlines()) == 1
    assert run_cli("remove", "vit_b").exit_code == 0 and visible_files(models_dir) == []


@pytest.mark.parametrize("command", ["pull", "verify", "remove"])
def test_cli_refuses_an_unknown_name_in_one_line(models_dir, command):
    result = run_cli(command, "vit_x")
    assert result.exit_code == 2
    assert result.stderr == ("error: 'vit_x' is not an official SAM or SAM 2.1 checkpoint; use one of vit_b, vit_l, "
                             "vit_h, hiera_t, hiera_s, hiera_b+, hiera_l\n")


def test_cli_pull_offline_exits_2_with_one_line(file_server, models_dir, monkeypatch):
    monkeypatch.setenv(catalog.BASE_URL_VARIABLE, closed_port_url())
    result = run_cli("pull", "vit_b")
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1
    assert str(models_dir) in result.stderr and result.stdout == ""
