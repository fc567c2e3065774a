"""Download, verify and remove the official SAM checkpoints of :data:`~pointsam_engine.catalog.CATALOG`.

:func:`pull` writes into ``<model folder>/.<file>.part``, resumes a partial file with an HTTP Range
request (or starts over where the server ignores it), and moves the file into the model folder with
``os.replace`` only once its sha256 is the catalogue's: a half or wrong file is never where a model is
looked up. A verified file gets a small record beside it (``.<file>.sha256.json``: size, mtime, sha256),
so listing models says "verified" without hashing gigabytes again. Standard library only (urllib).
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlsplit

from .catalog import Checkpoint, checkpoint, download_dir, file_digest, file_sha256, installed_path, model_dirs
from .errors import Cancelled, ModelError, OutputError, PointSamError
from .output import write_text

Progress = Callable[[float, str], None]
BLOCK = 1 << 20
TIMEOUT_S = 30.0  # connect, and any silence while reading
_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)

VERIFIED, NOT_VERIFIED, MISMATCH, WRONG_SIZE, NOT_INSTALLED = (
    "verified", "not verified", "sha256 mismatch", "wrong size", "not installed")


class DownloadError(PointSamError, OSError):
    """The checkpoint server could not be reached or stopped answering; the partial file is kept."""


def pull(name: str, progress: Optional[Progress] = None, cancel: Optional[threading.Event] = None) -> dict:
    """Download the official checkpoint ``name`` into the model folder, verified; ``{"name", "path", "sha256",
    "downloaded"}`` (``downloaded`` False: it was already installed and verified).

    ``progress(fraction, stage)`` reports; ``cancel`` stops between blocks (the partial file is kept for the
    next pull). Raises :class:`DownloadError` when offline, :class:`ModelError` on a sha256 mismatch.
    """
    entry, progress = checkpoint(name), progress or (lambda fraction, stage: None)
    existing = installed_path(entry.name)
    if existing is not None:
        return _already_installed(entry, existing, progress)
    folder = download_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create the model folder {folder} ({exc.strerror}); set POINTSAM_MODELS "
                            "to a folder you can write") from None
    part = folder / f".{entry.file}.part"
    digest = _fetch(entry, part, progress, cancel or threading.Event())
    if digest != entry.sha256:
        part.unlink(missing_ok=True)
        raise ModelError(f"the downloaded {entry.file} has sha256 {digest[:12]}…, not the official "
                         f"{entry.sha256[:12]}…; it was deleted and nothing was installed; pull again "
                         f"(from {entry.url})")
    target = folder / entry.file
    os.replace(part, target)  # atomic: the model folder only ever holds the verified file
    record_sha256(target, digest)
    progress(1.0, f"{entry.name} verified")
    return {"name": entry.name, "path": str(target), "sha256": digest, "downloaded": True}


def verify(name: str, progress: Optional[Progress] = None) -> dict:
    """Hash the installed file of ``name`` against the catalogue: ``{"name", "path", "sha256", "ok"}``."""
    entry = checkpoint(name)
    path = _installed_or_raise(entry)
    if progress:
        progress(0.0, f"hashing {path.name}")
    digest = file_sha256(path)
    record_sha256(path, digest)
    return {"name": entry.name, "path": str(path), "sha256": digest, "ok": digest == entry.sha256}


def remove(name: str) -> dict:
    """Delete the installed file of ``name`` (the one a model name loads), its record and any partial download:
    ``{"name", "removed"}``."""
    entry = checkpoint(name)
    part = download_dir() / f".{entry.file}.part"
    path = installed_path(entry.name)
    if path is None and not part.exists():
        raise ModelError(f"{entry.name} is not installed in {_folders()}; nothing to remove")
    part.unlink(missing_ok=True)
    if path is None:
        return {"name": entry.name, "removed": str(part)}
    _record_path(path).unlink(missing_ok=True)
    path.unlink()
    return {"name": entry.name, "removed": str(path)}


def state(entry: Checkpoint, path: Optional[Path]) -> str:
    """What is known of an installed file without hashing it: verified, sha256 mismatch, wrong size,
    not verified (no record of its current version) or not installed."""
    if path is None:
        return NOT_INSTALLED
    if path.stat().st_size != entry.size:
        return WRONG_SIZE
    digest = recorded_sha256(path)
    if digest is None:
        return NOT_VERIFIED
    return VERIFIED if digest == entry.sha256 else MISMATCH


def recorded_sha256(path) -> Optional[str]:
    """The sha256 recorded for this version of ``path`` (same size and mtime) by pull or verify, if any."""
    try:
        record = json.loads(_record_path(path).read_text())
        stat = Path(path).stat()
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or [record.get("size"), record.get("mtime_ns")] != [stat.st_size, stat.st_mtime_ns]:
        return None
    return record.get("sha256")


def _already_installed(entry: Checkpoint, path: Path, progress: Progress) -> dict:
    progress(0.0, f"checking the installed {path.name}")
    digest = recorded_sha256(path) or file_sha256(path)
    if digest != entry.sha256:
        raise ModelError(f"{path} is already there but is not the official {entry.name} (sha256 {digest[:12]}…); "
                         f"move it away or run `pointsam models remove {entry.name}`, then pull again")
    record_sha256(path, digest)
    progress(1.0, f"{entry.name} already installed")
    return {"name": entry.name, "path": str(path), "sha256": digest, "downloaded": False}


def _fetch(entry: Checkpoint, part: Path, progress: Progress, cancel: threading.Event) -> str:
    """Complete ``part`` from ``entry.url`` (resuming what it holds) and return the whole file's sha256."""
    digest, have = _resume_point(entry, part, progress)
    if have == entry.size:
        return digest.hexdigest()
    try:
        with _open(entry, have) as response:
            if have and response.status != 206:  # the server ignored Range: start over
                digest, have = hashlib.sha256(), 0
            have = _append(response, part, digest, have, entry, progress, cancel)
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError) as exc:
        raise _offline(entry, part, exc) from None
    if have != entry.size:
        raise _offline(entry, part, ConnectionError(f"the connection closed after {have:,} of {entry.size:,} bytes"))
    return digest.hexdigest()


def _resume_point(entry: Checkpoint, part: Path, progress: Progress):
    """The sha256 of what ``part`` holds and its size; a part longer than the checkpoint is dropped."""
    have = part.stat().st_size if part.exists() else 0
    if have > entry.size:  # not a prefix of this checkpoint
        part.unlink()
        have = 0
    if not have:
        return hashlib.sha256(), 0
    progress(0.0, f"checking the partial {entry.file}")
    return file_digest(part), have


def _open(entry: Checkpoint, offset: int):
    request = urllib.request.Request(entry.url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the server will not serve that range: ask for the whole file
            return urllib.request.urlopen(entry.url, timeout=TIMEOUT_S)
        raise DownloadError(f"{entry.url} answered HTTP {exc.code} ({exc.reason}); try again later, or download "
                            f"it by other means into {download_dir()}") from None


def _append(response, part: Path, digest, have: int, entry: Checkpoint, progress: Progress,
            cancel: threading.Event) -> int:
    """Write the response after the ``have`` bytes of ``part`` block by block, hashing; returns the bytes it holds."""
    try:
        with open(part, "ab" if have else "wb") as out:
            while have < entry.size:
                if cancel.is_set():
                    raise Cancelled(f"download of {entry.name} cancelled; the partial file is kept for the next pull")
                block = response.read(min(BLOCK, entry.size - have))
                if not block:
                    break
                out.write(block)
                digest.update(block)
                have += len(block)
                progress(have / entry.size, f"downloading {entry.name}: {have / 1e6:,.0f} of {entry.size / 1e6:,.0f} MB")
    except OSError as exc:
        if exc.filename is None and exc.errno not in _DISK_ERRORS:
            raise  # the network's: the caller says offline
        raise DownloadError(f"cannot write {part} ({exc.strerror}); {entry.file} needs {entry.size / 1e6:,.0f} MB: "
                            f"free space there or set POINTSAM_MODELS to another folder, then pull again") from None
    return have


def _offline(entry: Checkpoint, part: Path, exc: BaseException) -> DownloadError:
    """One line: the server is out of reach, where a file downloaded another way goes, what was kept."""
    reason = getattr(exc, "reason", None) or exc
    size = part.stat().st_size if part.exists() else 0
    if part.exists() and not size:
        part.unlink()
    kept = f"; the {size / 1e6:,.0f} MB already downloaded are kept for the next pull" if size else ""
    return DownloadError(f"cannot download {entry.file} from {urlsplit(entry.url).netloc} ({reason}); offline? "
                         f"Download {entry.url} another way, put it into {part.parent} and run "
                         f"`pointsam models verify {entry.name}`{kept}")


def _installed_or_raise(entry: Checkpoint) -> Path:
    path = installed_path(entry.name)
    if path is None:
        raise ModelError(f"{entry.name} is not installed in {_folders()}; get it with `pointsam models pull {entry.name}`")
    return path


def _folders() -> str:
    return " or ".join(str(folder) for folder in model_dirs())


def _record_path(path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.sha256.json")


def record_sha256(path, digest: str) -> None:
    """Remember ``digest`` as the sha256 of this version of ``path`` (read back by :func:`recorded_sha256`);
    a folder we cannot write just goes without."""
    path = Path(path)
    stat = path.stat()
    try:
        write_text(_record_path(path), json.dumps({"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}))
    except OutputError:
        pass
