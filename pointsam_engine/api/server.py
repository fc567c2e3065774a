"""``pointsam serve``: start uvicorn on a loopback port, announce the URL and token, clean up on exit.

The socket is bound here (port 0 picks a free one) before uvicorn starts, so the announced URL is the
real one. The announcement is one JSON line on stdout and the same JSON in a connection file only the
user can read, which is how the QGIS plugin finds a running engine. With ``--watch-parent`` the server
also stops when the process that started it goes away (a QGIS that crashed or was killed), so no engine
is left orphaned.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..config import SERVE_MAX_PARALLEL, SegmentConfig
from ..errors import OptionError
from ..output import atomic_path


def default_connection_file() -> Path:
    """``$XDG_RUNTIME_DIR/pointsam/serve.json``, else ``~/.cache/pointsam/serve.json``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime and os.path.isdir(runtime) else Path.home() / ".cache"
    return base / "pointsam" / "serve.json"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets that say TCP, and without it
    # a response's body waits for the client's delayed ACK of its headers (~40 ms on every request)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OptionError(f"cannot listen on {host}:{port} ({exc.strerror}); "
                          "choose another --port, or 0 for a free one") from None
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


def write_connection_file(path: Path, info: dict) -> Path:
    """Write the announcement readable by the user only (mode 0600), atomically."""
    from ..output import check_writable, disk_error

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise disk_error(exc, path) from None
    check_writable(path, "--connection-file")
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(info, fh)
    os.chmod(path, 0o600)
    return path


def serve(config: SegmentConfig, *, host: str = "127.0.0.1", port: int = 0, token: Optional[str] = None,
          allow_remote: bool = False, connection_file: Optional[str] = None, adapter_dirs: Sequence[str] = (),
          watch_parent: bool = False, max_parallel: int = SERVE_MAX_PARALLEL, output_root: Optional[str] = None,
          echo=print) -> None:
    """Load the model, announce ``{"url", "token", "pid", ...}`` and serve until interrupted.

    ``adapter_dirs``: folders whose ``*.adapter.pt`` files ``/v1/models`` offers, besides the model folders.
    ``max_parallel``: clicks (predict, prefetch) that may run at once; others wait. ``output_root``: jobs may
    write only inside this folder.
    ``watch_parent``: also stop, as on SIGTERM, when the parent process ends (even by kill -9) or closes
    this process's stdin (see :func:`watch_parent_process`).
    """
    import uvicorn

    from .app import create_app
    from .engine import Engine
    from .guard import LOOPBACK_HOSTS

    if not is_loopback(host) and not allow_remote:
        raise OptionError(f"--host {host} is not a loopback address; pass --allow-remote with --token to serve other machines")
    if allow_remote and not token:
        raise OptionError("--allow-remote needs --token: choose a long secret the clients will send")
    token = token or secrets.token_urlsafe(32)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again: a stop, not an error;
    # before uvicorn runs (while the model loads), SIGTERM stops here too, so the cleanup below always runs
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    conn, info, sock = None, {}, None
    try:
        if watch_parent:
            watch_parent_process(lambda: os.kill(os.getpid(), signal.SIGTERM))
        engine = Engine(config, adapter_dirs=adapter_dirs, max_parallel=max_parallel, output_root=output_root)
        sock = bind(host, port)
        bound_port = sock.getsockname()[1]
        url_host = f"[{host}]" if ":" in host else host
        allowed = {*LOOPBACK_HOSTS, host}
        info = {"url": f"http://{url_host}:{bound_port}", "token": token, "pid": os.getpid(), "model": engine.model.label}
        conn = write_connection_file(Path(connection_file) if connection_file else default_connection_file(), info)
        echo(json.dumps({**info, "connection_file": str(conn)}))
        app = create_app(engine, token, allowed_hosts=allowed)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=30))
        server.run(sockets=[sock])
    except (KeyboardInterrupt, _Stop):
        pass
    finally:  # the app's lifespan has closed the engine (cancelled its jobs)
        signal.signal(signal.SIGTERM, previous)
        if sock is not None:
            sock.close()
        if conn is not None:
            _remove_if_ours(conn, info)


ORPHAN_GRACE_SECONDS = 60.0  # after the parent went away: time to cancel jobs and clean up before a hard exit


def watch_parent_process(stop: Callable[[], None], poll_seconds: float = 0.5) -> None:
    """Call ``stop`` once, from a daemon thread, when this process's parent goes away: its stdin reaches
    EOF (the parent's end of a pipe closed, as when the parent dies) or the parent pid changes (the
    parent died, however, and this process was adopted). Whatever arrives on stdin is read and ignored."""
    parent = os.getppid()
    fired = threading.Event()

    def fire() -> None:
        if not fired.is_set():
            fired.set()
            stop()
            # a job stuck in a library call would keep the process alive: after the grace period it ends anyway
            threading.Timer(ORPHAN_GRACE_SECONDS, os._exit, args=(3,)).start()

    def until_stdin_closes() -> None:
        try:
            while os.read(sys.stdin.fileno(), 4096):
                pass
        except (OSError, ValueError, AttributeError):  # no usable stdin: the pid check still watches
            return
        fire()

    def until_parent_changes() -> None:
        while not fired.wait(poll_seconds):
            if os.getppid() != parent:
                fire()

    threading.Thread(target=until_stdin_closes, name="pointsam-stdin-watch", daemon=True).start()
    threading.Thread(target=until_parent_changes, name="pointsam-parent-watch", daemon=True).start()


class _Stop(Exception):
    pass


def _raise_stop(*_):
    raise _Stop()


def _remove_if_ours(path: Path, info: dict) -> None:
    """Remove the connection file unless another server has replaced it meanwhile."""
    try:
        if json.loads(path.read_text()).get("pid") == info["pid"]:
            path.unlink()
    except (OSError, ValueError):
        pass
