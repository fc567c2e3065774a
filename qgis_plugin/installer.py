"""Set up the engine's own Python environment from the wheel the plugin zip carries (no qgis imports here).

:func:`setup` is what "Set up engine…" runs on a worker thread: check free disk space, create the virtual
environment (default ``~/.pointsam/venv``: outside the QGIS profile, so it survives a new profile and serves
every profile), pip-install the engine wheel with its dependencies from the package index (torch from
PyTorch's CPU index when no NVIDIA GPU is found and that index answers), then start ``pointsam serve`` from
the environment and return its ``/v1/health``. Running it again over the same folder repairs or upgrades in
place. Every failure is one :class:`InstallError` line that says what to do.

The environment needs a Python >= 3.10 that can create a venv with pip: :func:`find_pythons` looks at
QGIS's own (``sys.executable`` may be the qgis binary there, hence ``sys._base_executable`` and
``sys.base_prefix``), ``python3`` on PATH and one the user picks.
"""

from __future__ import annotations

import os
import platform
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .engine import EngineProcess
from .errors import InstallError, PluginError

DEFAULT_TARGET = Path.home() / ".pointsam" / "venv"
MIN_PYTHON = (3, 10)
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
WINDOWS_CUDA_INDEX = "https://download.pytorch.org/whl/cu126"  # PyPI's Linux torch already is the CUDA build
GB = 1024 ** 3
NEEDED_BYTES = {"cuda": 6 * GB, "cpu": 2 * GB}  # the environment with torch, plus pip's temporary files
VENV_FIX = "sudo apt install python3-venv"
RETRY = "press Install again (it repairs the environment in place)"

Log = Callable[[str], None]
Progress = Callable[[float, str], None]
Cancelled = Callable[[], bool]
Run = Callable[..., subprocess.CompletedProcess]

# the version first, so that a Python without ensurepip still tells it; then which interpreter it really is
_PROBE = ("import os, sys; print('%d.%d' % sys.version_info[:2]); print(os.path.realpath(sys.executable)); "
          "print(sys.prefix); import venv, ensurepip")


@dataclass(frozen=True)
class PythonCandidate:
    """A Python the environment could be made with; ``problem`` says why not (empty when usable)."""

    path: str
    version: str = ""
    problem: str = ""
    # the interpreter behind ``path`` and its prefix: a pyenv shim and the Python it runs are one candidate
    identity: tuple = ()

    @property
    def usable(self) -> bool:
        return not self.problem


def probe_python(path: str, run: Run = subprocess.run) -> PythonCandidate:
    """Ask ``path`` its version and whether it can create a venv with pip (Debian's lacks ensurepip
    unless python3-venv is installed)."""
    try:
        out = run([path, "-c", _PROBE], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return PythonCandidate(path, problem=f"{path} does not run ({type(exc).__name__}); choose another Python")
    lines = out.stdout.splitlines()
    version = lines[0].strip() if lines else ""
    identity = tuple(lines[1:3]) if len(lines) >= 3 else (os.path.realpath(path),)
    try:
        major, minor = (int(part) for part in version.split("."))
    except ValueError:
        said = (out.stderr or "").strip().splitlines()
        why = said[0][:100] if said else "no version printed"
        return PythonCandidate(path, problem=f"{path} does not run as Python ({why}); choose another one")
    if (major, minor) < MIN_PYTHON:
        return PythonCandidate(path, version, f"{path} is Python {version}; the engine needs Python 3.10 or newer: "
                                              "choose another Python", identity)
    if out.returncode != 0:
        return PythonCandidate(path, version, f"{path} cannot create environments with pip (no ensurepip); "
                                              f"install it with `{VENV_FIX}`, or choose another Python", identity)
    return PythonCandidate(path, version, identity=identity)


def candidate_paths(chosen: str = "", which: Callable[[str], Optional[str]] = shutil.which) -> List[str]:
    """Existing Python interpreters worth probing, each file once: the user's choice, then the Python QGIS runs
    on (found from its prefix: inside QGIS ``sys.executable`` is whatever ``python3`` comes first on PATH, a
    pyenv shim or a conda Python as often as QGIS's own), then the others on PATH."""
    exe = "python.exe" if os.name == "nt" else os.path.join("bin", "python3")
    paths = [chosen, os.path.join(sys.base_prefix, exe), os.path.join(sys.prefix, exe),
             getattr(sys, "_base_executable", ""), sys.executable,
             *(which(name) or "" for name in ("python3", "python3.12", "python3.11", "python3.10"))]
    seen, found = set(), []
    for path in paths:
        # inside QGIS sys.executable is the qgis binary: running it with -c would open a second QGIS
        if not path or not os.path.basename(path).lower().startswith("python") or not os.path.isfile(path):
            continue
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            found.append(path)
    return found


def find_pythons(chosen: str = "", run: Run = subprocess.run,
                 which: Callable[[str], Optional[str]] = shutil.which) -> List[PythonCandidate]:
    """Every candidate Python, probed, each interpreter once: a pyenv shim and the Python it runs are one entry,
    under the interpreter's own path unless the shim is the user's choice (what a shim runs depends on the folder
    and PYENV_VERSION); usable ones first (in the order of :func:`candidate_paths`). A name found on PATH that
    does not run as Python (a pyenv shim of a version that is not installed) is left out: it is no Python the
    analyst has; the analyst's own choice is listed whatever it is, with its problem."""
    kept: dict = {}
    for candidate in (probe_python(path, run) for path in candidate_paths(chosen, which)):
        if not candidate.version and candidate.path != chosen:
            continue
        key = candidate.identity or (candidate.path,)
        earlier = kept.get(key)
        if earlier is None or (earlier.path != chosen and os.path.realpath(candidate.path) == key[0]):
            kept[key] = candidate
    return sorted(kept.values(), key=lambda candidate: not candidate.usable)


def nvidia_gpu(run: Run = subprocess.run, which: Callable[[str], Optional[str]] = shutil.which) -> str:
    """The first NVIDIA GPU's name as ``nvidia-smi -L`` lists it, or "" when there is none."""
    smi = which("nvidia-smi")
    if not smi:
        return ""
    try:
        out = run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return ""
    gpus = [line.split(":", 1)[1].split("(UUID")[0].strip() for line in out.stdout.splitlines()
            if out.returncode == 0 and line.startswith("GPU ") and ":" in line]
    return gpus[0] if gpus else ""


def index_reachable(url: str, timeout: float = 4.0) -> bool:
    """Whether ``url`` answers within ``timeout`` seconds (a name lookup that hangs counts as no answer)."""
    answer: "queue.Queue[bool]" = queue.Queue()

    def ask() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
                answer.put(True)
        except Exception:  # any failure means: not reachable
            answer.put(False)

    threading.Thread(target=ask, daemon=True).start()
    try:
        return answer.get(timeout=timeout + 1)
    except queue.Empty:
        return False


@dataclass(frozen=True)
class TorchPlan:
    """Which torch build to install: ``build`` "cuda" or "cpu", ``index`` an extra index for it (None: the
    package index's own), ``note`` the log line that says why."""

    build: str
    index: Optional[str]
    note: str


def torch_plan(gpu: str, system: str = "", reachable: Callable[[str], bool] = index_reachable) -> TorchPlan:
    """The CUDA build of torch when there is an NVIDIA GPU, else the CPU build where PyTorch's index has one;
    PyTorch's index is probed first and skipped, with a note, when it does not answer."""
    system = system or platform.system()
    if gpu:
        build, index = "cuda", (WINDOWS_CUDA_INDEX if system == "Windows" else None)
        why = f"NVIDIA GPU found ({gpu}): torch with CUDA"
    elif system in ("Linux", "Windows"):
        build, index, why = "cpu", CPU_INDEX, "no NVIDIA GPU found: the CPU build of torch"
    else:
        build, index, why = "cpu", None, "torch from the package index (its macOS build runs on the CPU and Apple GPUs)"
    if index and not reachable(index):
        # PyPI's Linux torch is the CUDA build: it works on a CPU too, only larger
        build = "cuda" if system == "Linux" else build
        return TorchPlan(build, None, f"{index} does not answer; torch comes from the package index instead")
    return TorchPlan(build, index, why + (f" from {index}" if index else " from the package index"))


def check_disk(folder: Path, needed: int, usage: Callable[[str], Tuple[int, int, int]] = shutil.disk_usage) -> None:
    """Refuse, in one line, when the disk holding ``folder`` has less than ``needed`` bytes free."""
    existing = Path(folder).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = usage(str(existing))[2]
    if free < needed:
        raise InstallError(f"only {free / GB:.1f} GB free on the disk of {existing}; the engine's environment needs "
                           f"about {needed / GB:.0f} GB: free some space or choose another folder, then {RETRY}")


_NO_NETWORK = ("Failed to establish a new connection", "Temporary failure in name resolution",
               "Name or service not known", "Network is unreachable", "ProxyError", "Read timed out",
               "Connection refused", "No route to host", "Could not fetch URL")


def pip_failure(lines: Sequence[str], target: Path) -> str:
    """One line for a failed pip run: what went wrong and what to do."""
    text = "\n".join(lines)
    if "No space left on device" in text:
        return f"the disk of {target} is full; free some space or choose another folder, then {RETRY}"
    if any(marker in text for marker in _NO_NETWORK):
        return ("pip cannot reach the package index (no network?); connect to the internet (or set pip's proxy) "
                f"and {RETRY}")
    errors = [line.strip() for line in lines if line.strip().startswith("ERROR:")]
    last = errors[-1][len("ERROR:"):].strip() if errors else (lines[-1].strip() if lines else "no output")
    return f"pip failed: {last}; see the log, then {RETRY}"


def venv_python(target: Path) -> Path:
    """The interpreter of the environment in ``target``."""
    return Path(target) / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def bundled_wheel(plugin_dir: Path = Path(__file__).resolve().parent) -> Path:
    """The engine wheel inside the installed plugin (``wheels/pointsam-*.whl``)."""
    wheels = sorted((plugin_dir / "wheels").glob("pointsam-*.whl"))
    if not wheels:
        raise InstallError(f"this copy of the plugin ({plugin_dir}) carries no engine wheel; install the plugin from "
                           "the zip `python3 -m qgis_plugin.build` makes (Plugins > Manage and Install Plugins > "
                           "Install from ZIP)")
    return wheels[-1]


class _Steps:
    """The commands of one setup run, each streamed to ``log``; ``cancelled`` kills the running one."""

    def __init__(self, log: Log, cancelled: Cancelled):
        self.log, self.cancelled = log, cancelled

    def run(self, command: List[str], on_line: Callable[[str], None] = lambda line: None) -> List[str]:
        self.log("$ " + " ".join(command))
        env = dict(os.environ, PYTHONUNBUFFERED="1", PIP_PROGRESS_BAR="off", PIP_NO_INPUT="1")
        env.pop("PYTHONHOME", None)  # QGIS's own Python home must not leak into another interpreter
        env.pop("PYTHONPATH", None)
        try:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    text=True, errors="replace", env=env, start_new_session=os.name != "nt")
        except OSError as exc:
            raise InstallError(f"cannot run {command[0]} ({exc.strerror}); choose another Python") from None
        lines: "queue.Queue[Optional[str]]" = queue.Queue()
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
        seen: List[str] = []
        while True:
            if self.cancelled():
                _kill_group(proc)
                raise InstallError(f"setup cancelled; {RETRY}")
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                break
            if not _is_progress(line):
                seen.append(line.rstrip())
                self.log(line.rstrip())
            on_line(line)
        if proc.wait() != 0:
            raise _CommandFailed(seen)
        return seen


class _CommandFailed(Exception):
    def __init__(self, lines: List[str]):
        super().__init__("command failed")
        self.lines = lines


def _pump(stream, lines: "queue.Queue[Optional[str]]") -> None:
    for line in stream:
        lines.put(line)
    stream.close()
    lines.put(None)


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop pip and whatever it started (build backends, downloads)."""
    try:
        if os.name == "nt":
            proc.kill()
        else:
            os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@dataclass
class SetupResult:
    """A finished setup: the environment's interpreter, the engine started from it and its ``/v1/health``."""

    python: str
    engine: EngineProcess
    health: Dict


def setup(python: str, target: Path = DEFAULT_TARGET, wheel: Optional[Path] = None, log: Log = print,
          progress: Progress = lambda fraction, stage: None, cancelled: Cancelled = lambda: False,
          engine_args: Sequence[str] = (), gpu: Optional[str] = None) -> SetupResult:
    """Create or repair the environment in ``target`` with ``python``, install the engine wheel into it and start
    the engine from it. ``gpu``: the NVIDIA GPU's name ("" for none; None asks nvidia-smi)."""
    target, wheel = Path(target).expanduser(), Path(wheel) if wheel else bundled_wheel()
    _check_target(target)
    candidate = probe_python(python)
    if not candidate.usable:
        raise InstallError(candidate.problem)
    plan = torch_plan(nvidia_gpu() if gpu is None else gpu)
    log(plan.note)
    check_disk(target, NEEDED_BYTES[plan.build])
    steps = _Steps(log, cancelled)
    progress(0.02, "creating the environment")
    _make_venv(steps, python, target)
    interpreter = str(venv_python(target))
    _pip_install(steps, interpreter, wheel, plan, target, progress)
    progress(0.92, "starting the engine")
    return _start(interpreter, engine_args, log, progress)


def _check_target(target: Path) -> None:
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not (target / "pyvenv.cfg").exists():
        raise InstallError(f"{target} already holds files and is not a Python environment; choose an empty or new "
                           "folder (nothing in it was changed)")


def _make_venv(steps: _Steps, python: str, target: Path) -> None:
    if (target / "pyvenv.cfg").exists():
        steps.log(f"repairing the environment in {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        steps.run([python, "-m", "venv", str(target)])
    except _CommandFailed as failed:
        text = "\n".join(failed.lines)
        if "ensurepip" in text:
            raise InstallError(f"{python} cannot create environments with pip; install it with `{VENV_FIX}`, or "
                               "choose another Python") from None
        raise InstallError(pip_failure(failed.lines, target).replace("pip failed", "creating the environment failed",
                                                                     1)) from None


EXPECTED_PACKAGES = 45  # about how many packages the engine pulls in: pip says how far it got only in words
EXPECTED_DOWNLOAD_MB = {"cuda": 3500, "cpu": 600}  # about what pip downloads for each torch build, when nothing is cached
RAW_PROGRESS_PIP = (24, 1)  # the first pip that reports a download's bytes as "Progress N of M" lines
MB = 1024 ** 2


def _pip_install(steps: _Steps, python: str, wheel: Path, plan: TorchPlan, target: Path, progress: Progress) -> None:
    pip = [python, "-m", "pip", "install", "--upgrade", "--disable-pip-version-check"]
    if _raw_progress(steps, python, pip):
        pip += ["--progress-bar", "raw"]
    extra = ["--extra-index-url", plan.index] if plan.index else []
    follow = _PipProgress(progress, EXPECTED_DOWNLOAD_MB[plan.build] * MB)
    try:
        steps.run([*pip, str(wheel), *extra], follow)
        # a second run repairs: the engine's own files are rewritten even when its version is already there
        steps.run([*pip, "--force-reinstall", "--no-deps", str(wheel)], follow)
    except _CommandFailed as failed:
        raise InstallError(pip_failure(failed.lines, target)) from None


def _raw_progress(steps: _Steps, python: str, pip: List[str]) -> bool:
    """Whether the environment's pip reports download progress, once it is brought up to date where it is older
    (ensurepip's: 23.x on Debian 12, silent for the minutes torch downloads). Only the bar depends on it: a
    failed update is logged and the install goes on."""
    if _pip_version(steps, python) >= RAW_PROGRESS_PIP:
        return True
    try:
        steps.run([*pip, "pip"])
    except _CommandFailed:
        steps.log("(pip could not be updated: the bar moves from package to package only)")
        return False
    return _pip_version(steps, python) >= RAW_PROGRESS_PIP


def _pip_version(steps: _Steps, python: str) -> Tuple[int, ...]:
    """The environment's pip version (from ``pip 26.3 from ...`` among its lines), (0,) when it does not say."""
    try:
        lines = steps.run([python, "-m", "pip", "--version"])
    except _CommandFailed:
        return (0,)
    found = next((m for m in map(_PIP_VERSION.match, lines) if m), None)
    return tuple(int(part) for part in found.group(1).split(".")) if found else (0,)


_PIP_VERSION = re.compile(r"^pip (\d+(?:\.\d+)*)\b")
_SIZE = re.compile(r"\(([\d.]+) (kB|MB|GB)\)")
_UNITS = {"kB": 1e3, "MB": 1e6, "GB": 1e9}


class _PipProgress:
    """Turns pip's lines into the bar, which never goes back: 0.05-0.15 while pip collects the packages (by
    their count), 0.15-0.70 while it downloads them (by bytes, against what the torch build is expected to
    take; pip >= 24.1 reports each file's bytes with ``--progress-bar raw``, older ones only each file's size),
    0.75 once it installs. The stage line names the file and its megabytes so far."""

    def __init__(self, progress: Progress, expected_bytes: float):
        self.progress, self.expected = progress, expected_bytes
        self.collected, self.downloaded, self.file, self.size, self.at, self.shown = 0, 0.0, "", 0.0, 0.0, 0.0

    def __call__(self, line: str) -> None:
        words = line.split()
        if line.startswith("Collecting "):
            self.collected += 1
            self._show(line.strip())
        elif words[:1] == ["Downloading"] and len(words) > 1:
            self._file_done()
            self.file = urllib.parse.unquote(words[1].rsplit("/", 1)[-1])
            size = _SIZE.search(line)
            self.size = float(size.group(1)) * _UNITS[size.group(2)] if size else 0.0
            self._show(f"downloading {self.file}")
        elif _is_progress(line) and len(words) == 4 and words[1].isdigit() and words[3].isdigit():
            self.at, self.size = float(words[1]), float(words[3]) or self.size
            self._show(f"downloading {self.file}: {self.at / MB:,.0f} of {self.size / MB:,.0f} MB")
        elif line.startswith("Installing collected packages"):
            self._file_done()
            self._show("installing packages", 0.75)

    def _file_done(self) -> None:
        self.downloaded += max(self.size, self.at) if self.file else 0.0
        self.file, self.size, self.at = "", 0.0, 0.0

    def _show(self, stage: str, at_least: float = 0.0) -> None:
        collecting = 0.10 * min(self.collected / EXPECTED_PACKAGES, 1.0)
        downloading = 0.55 * min((self.downloaded + self.at) / self.expected, 1.0)
        self.shown = max(self.shown, 0.05 + collecting + downloading, at_least)
        self.progress(self.shown, stage)


def _is_progress(line: str) -> bool:
    """pip's raw download progress (``Progress N of M``, four a second): for the bar, not the log."""
    return line.startswith("Progress ")


def _start(python: str, engine_args: Sequence[str], log: Log, progress: Progress) -> SetupResult:
    engine = EngineProcess(python, engine_args)
    try:
        health = engine.client().health()
    except PluginError as exc:
        engine.stop()
        raise InstallError(f"the engine was installed but does not start ({exc}); {RETRY}") from None
    log(f"engine {health.get('version')} answers on {health.get('device')}")
    progress(1.0, "engine running")
    return SetupResult(python, engine, health)
