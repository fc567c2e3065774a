"""The engine the plugin talks to: a ``pointsam serve`` process it runs itself, or one already running.

QGIS's Python never imports torch: :class:`EngineProcess` runs the engine with the interpreter of the
environment where pointsam is installed (setting, or ``POINTSAM_ENGINE_PYTHON``), reads the one JSON line
it prints, checks its health, restarts it when it has died, and stops it when QGIS closes. The engine
is started with ``--watch-parent`` and a stdin pipe only this process holds, so it also exits when QGIS
ends in a way that runs no cleanup (a crash, kill -9). Several threads may ask for the client at once:
the first starts the engine, the others wait for it.
:class:`RemoteEngine` connects to an engine someone else started (a URL and token, or its connection
file) and only health-checks it: what the plugin does not own, it never restarts. No qgis imports here.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

from .client import EngineClient
from .errors import SETUP_HINT, EngineMissingError, EngineRequestError, EngineUnavailableError, PluginError

ENV_PYTHON = "POINTSAM_ENGINE_PYTHON"
INSTALL_HINT = f"{SETUP_HINT}, or choose the engine Python in Settings > Options > PointSAM"
FOLDER_PREFIX = "pointsam-plugin-"  # then the pid of the QGIS that started the engine: pointsam-plugin-4242-k2j9
EXIT_GRACE_S = 2.0  # an engine that is exiting closes its sockets a moment before its exit status exists


def crash_log() -> Path:
    """Where the log of the last engine that stopped on its own is kept (one file, replaced by the next)."""
    return Path(tempfile.gettempdir()) / "pointsam-engine-crash.log"


def engine_python(configured: Optional[str] = None) -> str:
    """The engine's interpreter: ``$POINTSAM_ENGINE_PYTHON``, else the configured one."""
    python = os.environ.get(ENV_PYTHON) or configured
    if not python:
        raise EngineMissingError(f"no PointSAM engine is set up; {INSTALL_HINT}")
    if not (os.path.isfile(python) or shutil.which(python)):
        raise EngineMissingError(f"the engine Python {python} does not exist; {INSTALL_HINT}")
    return python


class EngineProcess:
    """One ``pointsam serve`` child process and its client."""

    def __init__(self, python: str, args: Sequence[str] = (), startup_timeout: float = 180.0):
        self.python, self.args, self.startup_timeout = python, list(args), startup_timeout
        self._proc: Optional[subprocess.Popen] = None
        self._log = None
        self._client: Optional[EngineClient] = None
        self._folder: Optional[str] = None  # the engine's connection file and log, while it runs
        self._stopping: Optional[subprocess.Popen] = None  # the engine last stopped here (its exit is no crash)
        self._lock = threading.Lock()

    @property
    def pid(self) -> Optional[int]:
        """The engine's process id while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def connection_file(self) -> Optional[Path]:
        """The file ``pointsam serve --connection-file`` writes, while the engine runs (None otherwise)."""
        return Path(self._folder) / "serve.json" if self._folder else None

    @property
    def log_file(self) -> Optional[Path]:
        """The engine's stderr (warnings, tracebacks of bugs), while the engine runs (None otherwise): its folder
        is removed when the engine stops; an engine that stopped on its own leaves it as :func:`crash_log`."""
        return Path(self._folder) / "engine.log" if self._folder else None

    def client(self) -> EngineClient:
        """A client of a healthy engine: starts it, or restarts it when it died or stopped answering."""
        with self._lock:
            if self._client is not None and self._alive():
                return self._client
            self._stop()
            self._client = self._start()
            return self._client

    def stop(self) -> None:
        with self._lock:
            self._stop()

    def _alive(self) -> bool:
        if self._proc is None or self._proc.poll() is not None:
            return False
        try:
            self._client.health()
            return True
        except PluginError:
            return False

    def _start(self) -> EngineClient:
        sweep_stale_folders()
        self._folder = tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-")
        try:
            return self._launch()
        except BaseException:
            self._stop()  # an engine that did not come up leaves neither a process nor its folder
            raise

    def _launch(self) -> EngineClient:
        command = [self.python, "-m", "pointsam_engine.cli", "serve", "--port", "0", "--watch-parent",
                   "--connection-file", str(self.connection_file), *self.args]
        self._log = open(self.log_file, "a")  # a file, not a pipe nobody reads: a full pipe would stall the engine
        try:
            # stdin: a pipe whose write end only this process holds; its EOF tells the engine we are gone
            self._proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                          text=True)
        except OSError as exc:
            raise EngineMissingError(f"cannot run the engine Python {self.python} ({exc.strerror}); "
                                     f"{INSTALL_HINT}") from None
        line = self._first_line()
        try:
            info = json.loads(line)
        except ValueError:
            raise EngineUnavailableError(f"the engine did not start: {line.strip() or 'no output'}") from None
        client = EngineClient(info["url"], info["token"],
                              on_unavailable=functools.partial(self._keep_log_if_dead, self._proc),
                              hint=f"it restarts on the next run; if it stopped, what it printed last is in {crash_log()}")
        client.health()
        return client

    def _keep_log_if_dead(self, proc: subprocess.Popen, grace: float = EXIT_GRACE_S) -> None:
        """Copy the log of the engine ``proc`` to :func:`crash_log`, with its exit status, if it exited on its own
        (a crash, the out-of-memory killer): its folder goes when the engine is replaced. ``grace``: how long an
        engine that stopped answering may take to exit."""
        log = self.log_file
        if proc is not self._proc or self._client is None or log is None or not log.is_file():
            return  # never came up (its start says why), or already replaced
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            return  # still running: it hangs, it did not stop
        if proc is self._stopping:
            return  # stopped here, not a crash
        with contextlib.suppress(OSError):
            text = log.read_text(errors="replace")
            crash_log().write_text(f"{text}\n[pointsam serve (pid {proc.pid}) exited with status {proc.returncode}]\n")

    def _first_line(self) -> str:
        box = {}
        reader = threading.Thread(target=lambda: box.setdefault("line", self._proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(self.startup_timeout)
        if box.get("line"):
            threading.Thread(target=self._proc.stdout.read, daemon=True).start()  # drain whatever follows
            return box["line"]
        self._proc.kill()
        self._proc.wait()
        errors = Path(self.log_file).read_text(errors="replace").strip().splitlines()
        last = errors[-1] if errors else f"no answer in {self.startup_timeout:.0f} s"
        if "No module named" in last:
            raise EngineMissingError(f"{self.python} has no complete PointSAM engine ({last.split(': ')[-1]}); "
                                     f"{INSTALL_HINT}")
        raise EngineUnavailableError(f"the engine did not start: {last}")

    def _stop(self) -> None:
        proc = self._proc
        if proc is not None:
            self._keep_log_if_dead(proc, grace=0)
        if proc is not None and proc.poll() is None:
            self._stopping = proc  # a call that finds it gone meanwhile keeps no crash log
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc is not None:
            for stream in (proc.stdin, proc.stdout):
                stream.close()
        if self._log is not None:
            self._log.close()
        if self._folder is not None:  # only now: the engine has exited, nothing writes its log any more
            shutil.rmtree(self._folder, ignore_errors=True)
        self._proc, self._client, self._log, self._folder = None, None, None, None


def sweep_stale_folders(root: Optional[str] = None) -> None:
    """Remove the engine folders (in ``root``, default the temporary folder) of QGIS processes that have exited.

    A QGIS that quits stops its engine and removes the folder; ``qgis_process`` exits without running Python's
    exit handlers, so its engine (which exits with it, ``--watch-parent``) leaves the folder. Only on POSIX systems,
    where asking whether a pid runs is harmless (on Windows, ``os.kill(pid, 0)`` sends Ctrl-C)."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):  # tidying up never stops an engine from starting
        for folder in Path(root or tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*"):
            pid = folder.name[len(FOLDER_PREFIX):].split("-")[0]
            if pid.isdigit() and not _running(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    """Whether ``pid`` may be a running process (kept when it cannot be asked: another user's, out of range)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


class RemoteEngine:
    """An engine already running elsewhere: ``locate()`` gives its ``(url, token)``; ``setting`` names where
    the user configured it, for the error messages. Never started, restarted or stopped here."""

    def __init__(self, locate: Callable[[], Tuple[str, str]], setting: str):
        self.locate, self.setting = locate, setting

    def client(self) -> EngineClient:
        """A client of the engine, health-checked; a one-line error when it does not answer or refuses the token."""
        url, token = self.locate()
        client = EngineClient(url, token, hint=f"start `pointsam serve` there or clear the setting {self.setting}")
        try:
            client.health()
        except EngineRequestError as exc:
            if exc.status != 401:
                raise
            raise EngineUnavailableError(f"the PointSAM engine at {client.url} refused the token; set pointsam/engine_token "
                                         f"to the token `pointsam serve` printed, or clear the setting {self.setting}") from None
        return client

    def stop(self) -> None:
        """Nothing to stop: the engine belongs to whoever started it."""


def read_connection_file(path: str, setting: str) -> Tuple[str, str]:
    """``(url, token)`` from the file ``pointsam serve --connection-file`` writes."""
    try:
        with open(path) as fh:
            info = json.load(fh)
        return str(info["url"]), str(info["token"])
    except FileNotFoundError:
        raise EngineUnavailableError(f"no PointSAM engine connection file {path}; start `pointsam serve "
                                     f"--connection-file {path}` or clear the setting {setting}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EngineUnavailableError(f"{path} is not a connection file of `pointsam serve` ({type(exc).__name__}); "
                                     f"restart `pointsam serve --connection-file {path}` or clear the setting "
                                     f"{setting}") from None
