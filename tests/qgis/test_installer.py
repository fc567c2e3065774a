"""The installer's decisions, with fakes for the machine: which Pythons can make the environment, the one-line
messages (Python without venv, a full disk, pip without network), the torch build for a GPU or a CPU, and the
fallback when PyTorch's index does not answer. No qgis needed; the real setup is in test_setup.py."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from qgis_plugin import installer
from qgis_plugin.errors import InstallError


def _fake_run(answers):
    """A subprocess.run that answers ``answers[path] = (returncode, stdout)`` and records the commands."""
    calls = []

    def run(command, **kwargs):
        calls.append(command)
        if command[0] not in answers:
            raise FileNotFoundError(command[0])
        code, out = answers[command[0]]
        return subprocess.CompletedProcess(command, code, out, "")

    run.calls = calls
    return run


def test_a_python_without_ensurepip_is_refused_with_the_apt_command():
    run = _fake_run({"/usr/bin/python3": (1, "3.11\n")})  # the probe imports ensurepip after printing the version
    candidate = installer.probe_python("/usr/bin/python3", run)
    assert not candidate.usable and candidate.version == "3.11"
    assert "sudo apt install python3-venv" in candidate.problem and "/usr/bin/python3" in candidate.problem


def test_old_missing_and_good_pythons():
    run = _fake_run({"/opt/py39": (0, "3.9\n"), "/opt/py312": (0, "3.12\n"), "/opt/notpython": (0, "")})
    old, good, odd = (installer.probe_python(path, run) for path in ("/opt/py39", "/opt/py312", "/opt/notpython"))
    assert "Python 3.9" in old.problem and "3.10 or newer" in old.problem
    assert good.usable and good.version == "3.12"
    assert "does not run as Python (no version printed)" in odd.problem
    assert "does not run" in installer.probe_python("/nowhere/python3", run).problem


def test_candidates_skip_the_qgis_binary_and_list_each_file_once(tmp_path, monkeypatch):
    qgis, python = tmp_path / "qgis", tmp_path / "python3.11"
    for path in (qgis, python):
        path.write_text("")
    (tmp_path / "python3").symlink_to(python)
    monkeypatch.setattr(sys, "executable", str(qgis))  # inside QGIS sys.executable is the qgis binary
    monkeypatch.setattr(sys, "_base_executable", str(qgis), raising=False)
    monkeypatch.setattr(sys, "base_prefix", str(tmp_path / "none"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "none"))
    paths = installer.candidate_paths("", which=lambda name: str(tmp_path / "python3") if name == "python3" else None)
    assert paths == [str(tmp_path / "python3")]
    chosen = tmp_path / "python3.12"
    chosen.write_text("")
    assert installer.candidate_paths(str(chosen), which=lambda name: None)[0] == str(chosen)


def test_the_python_qgis_runs_on_comes_before_the_first_python3_on_path(tmp_path, monkeypatch):
    """Inside QGIS sys.executable is the first python3 on PATH (here a pyenv shim), not QGIS's own Python."""
    shim, own = tmp_path / "shims" / "python3", tmp_path / "usr" / "bin" / "python3"
    for path in (shim, own):
        path.parent.mkdir(parents=True)
        path.write_text("")
    monkeypatch.setattr(sys, "executable", str(shim))
    monkeypatch.setattr(sys, "_base_executable", str(shim), raising=False)
    monkeypatch.setattr(sys, "base_prefix", str(tmp_path / "usr"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "usr"))
    assert installer.candidate_paths("", which=lambda name: str(shim) if name == "python3" else None) == [str(own), str(shim)]


def test_find_pythons_puts_the_usable_first(tmp_path):
    venvless, good = tmp_path / "python3", tmp_path / "python3.12"
    for path in (venvless, good):
        path.write_text("")
    run = _fake_run({str(venvless): (1, "3.11\n"), str(good): (0, "3.12\n")})
    which = lambda name: str(good) if name == "python3.12" else None  # noqa: E731
    found = installer.find_pythons(str(venvless), run=run, which=which)
    assert [(c.path, c.usable) for c in found][:2] == [(str(good), True), (str(venvless), False)]


def test_a_shim_and_the_python_it_runs_are_listed_once_two_interpreters_twice(tmp_path):
    """A pyenv shim is a script that runs another Python: the probe asks each path which interpreter it is."""
    shim = tmp_path / "shims" / "python3"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    shim.chmod(0o755)
    real = installer.probe_python(sys.executable)
    assert installer.probe_python(str(shim)).identity == real.identity
    twin = tmp_path / "python3.12"  # the same interpreter file under another prefix is another Python
    twin.write_text("")
    answers = {str(shim): (0, "3.12\n/usr/bin/python3.12\n/usr\n"), str(twin): (0, "3.12\n/usr/bin/python3.12\n/venv\n")}
    which = lambda name: {"python3": str(shim), "python3.12": str(twin)}.get(name)  # noqa: E731
    found = installer.find_pythons(str(shim), run=_fake_run(answers), which=which)
    assert [c.path for c in found if c.path in answers] == [str(shim), str(twin)]
    answers[str(twin)] = answers[str(shim)]
    found = installer.find_pythons(str(shim), run=_fake_run(answers), which=which)
    assert [c.path for c in found if c.path in answers] == [str(shim)]  # the user's choice, though a shim


def test_a_shim_of_a_python_not_installed_is_not_listed_unless_chosen(tmp_path):
    """pyenv puts shims for every version it knows on PATH; one not installed answers 'command not found'."""
    missing, good = tmp_path / "shims" / "python3.12", tmp_path / "python3"
    missing.parent.mkdir()
    for path in (missing, good):
        path.write_text("")
    answers = {str(missing): (127, ""), str(good): (0, "3.11\n")}
    which = lambda name: {"python3": str(good), "python3.12": str(missing)}.get(name)  # noqa: E731
    assert [c.path for c in installer.find_pythons("", run=_fake_run(answers), which=which)
            if c.path in answers] == [str(good)]
    chosen = installer.find_pythons(str(missing), run=_fake_run(answers), which=which)
    assert [(c.path, c.usable) for c in chosen if c.path in answers] == [(str(good), True), (str(missing), False)]


def test_a_shim_found_on_path_gives_way_to_the_interpreter_it_runs(tmp_path):
    shim, real = tmp_path / "shims" / "python3", tmp_path / "versions" / "python3.12"
    for path in (shim, real):
        path.parent.mkdir()
        path.write_text("")
    same = (0, f"3.12\n{real}\n{tmp_path / 'versions'}\n")
    which = lambda name: {"python3": str(shim), "python3.12": str(real)}.get(name)  # noqa: E731
    found = installer.find_pythons("", run=_fake_run({str(shim): same, str(real): same}), which=which)
    assert [c.path for c in found if c.path in (str(shim), str(real))] == [str(real)]


def test_free_disk_space_is_checked_before_anything_is_written(tmp_path):
    target = tmp_path / "not" / "yet" / "venv"
    with pytest.raises(InstallError) as error:
        installer.check_disk(target, installer.NEEDED_BYTES["cuda"], usage=lambda path: (0, 0, 2 * installer.GB))
    message = str(error.value)
    assert "only 2.0 GB free" in message and "about 6 GB" in message and str(tmp_path) in message
    assert "choose another folder" in message and "\n" not in message
    assert not target.parent.exists()
    installer.check_disk(target, installer.NEEDED_BYTES["cpu"], usage=lambda path: (0, 0, 50 * installer.GB))


def test_an_nvidia_gpu_gets_the_cuda_build_and_a_cpu_the_cpu_index():
    smi = _fake_run({"/usr/bin/nvidia-smi": (0, "GPU 0: NVIDIA A10G (UUID: GPU-1234)\n")})
    gpu = installer.nvidia_gpu(run=smi, which=lambda name: "/usr/bin/nvidia-smi")
    assert gpu == "NVIDIA A10G"
    assert installer.nvidia_gpu(which=lambda name: None) == ""
    asked = []
    reachable = lambda url: asked.append(url) or True  # noqa: E731
    linux_gpu = installer.torch_plan(gpu, "Linux", reachable)
    assert (linux_gpu.build, linux_gpu.index) == ("cuda", None) and "NVIDIA A10G" in linux_gpu.note
    windows_gpu = installer.torch_plan(gpu, "Windows", reachable)
    assert windows_gpu.build == "cuda" and "download.pytorch.org/whl/cu" in windows_gpu.index
    cpu = installer.torch_plan("", "Linux", reachable)
    assert (cpu.build, cpu.index) == ("cpu", installer.CPU_INDEX)
    assert asked == [windows_gpu.index, installer.CPU_INDEX]


def test_an_unreachable_cpu_index_falls_back_to_the_package_index_with_a_log_line():
    plan = installer.torch_plan("", "Linux", reachable=lambda url: False)
    assert plan.index is None and installer.CPU_INDEX in plan.note and "package index instead" in plan.note
    assert plan.build == "cuda"  # PyPI's Linux torch: the disk check must expect the larger build


def test_the_real_probe_of_an_unroutable_index_fails_fast():
    assert installer.index_reachable("http://192.0.2.1/whl/cpu", timeout=1.0) is False  # TEST-NET-1: no answer


@pytest.mark.parametrize("lines, expected", [
    (["Collecting torch", "WARNING: Retrying ... Failed to establish a new connection: [Errno 101] Network is "
      "unreachable", "ERROR: No matching distribution found for torch"], "cannot reach the package index"),
    (["Installing collected packages: torch", "ERROR: Could not install packages due to an OSError: [Errno 28] No "
      "space left on device"], "is full; free some space"),
    (["ERROR: Package 'pointsam' requires a different Python: 3.9.2 not in '>=3.10'"],
     "pip failed: Package 'pointsam' requires a different Python"),
])
def test_pip_failures_become_one_line_that_says_what_to_do(lines, expected, tmp_path):
    message = installer.pip_failure(lines, tmp_path)
    assert expected in message and "press Install again" in message and "\n" not in message


def test_a_folder_holding_other_files_is_refused_and_left_alone(tmp_path):
    (tmp_path / "thesis.docx").write_text("mine")
    with pytest.raises(InstallError, match="already holds files and is not a Python environment"):
        installer.setup(sys.executable, tmp_path, wheel=tmp_path / "pointsam-0.1.0-py3-none-any.whl",
                        log=lambda line: None, gpu="")
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.docx"]


def test_a_plugin_without_its_wheel_says_to_install_from_the_zip(tmp_path):
    with pytest.raises(InstallError, match="carries no engine wheel.*Install from ZIP"):
        installer.bundled_wheel(tmp_path)


def test_cancel_kills_the_running_command_and_its_children(tmp_path):
    marker = tmp_path / "child.pid"
    code = ("import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', 'import time; "
            "time.sleep(600)']); open(sys.argv[1], 'w').write(str(child.pid)); print('started', flush=True); "
            "time.sleep(600)")
    lines = []
    steps = installer._Steps(lines.append, cancelled=lambda: any(line == "started" for line in lines))
    with pytest.raises(InstallError, match="setup cancelled"):
        steps.run([sys.executable, "-c", code, str(marker)])
    child = Path(f"/proc/{marker.read_text()}/stat")
    for _ in range(100):  # SIGKILL is delivered at once, the exit itself takes a moment
        if not _running(child):
            break
        time.sleep(0.1)
    assert not _running(child), "pip's children must die with it"


def _running(stat: Path) -> bool:
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _fake_pip(tmp_path: Path, version: str, upgrade_fails: bool = False) -> Path:
    """An executable standing in for the environment's python, printing what pip prints: ``-m pip --version``
    (after a warning, as in a damaged environment), an update of pip itself, and an install of the wheel in
    current pip's order (every package collected from its metadata first, then the files downloaded, torch's
    from PyTorch's index by URL), with raw progress lines when asked for them."""
    state = tmp_path / "pip_version.txt"
    state.write_text(version)
    script = tmp_path / "python"
    script.write_text(f"""#!{sys.executable}
import sys
from pathlib import Path
args, state = sys.argv[1:], Path({str(state)!r})
with open({str(tmp_path / 'calls.txt')!r}, 'a') as fh:
    fh.write(' '.join(args) + '\\n')
MB = 1024 ** 2

def download(name, mb):
    print(f'Downloading {{name}} ({{mb:.1f}} MB)')
    if '--progress-bar' in args:
        for done in (0, mb // 2, mb):
            print(f'Progress {{done * MB}} of {{mb * MB}}')

if '--version' in args:
    print('WARNING: Ignoring invalid distribution ~orch (/env/lib/python3.11/site-packages)')
    print(f'pip {{state.read_text()}} from /env/lib/python3.11/site-packages/pip (python 3.11)')
elif args[-1] == 'pip':
    if {upgrade_fails!r}:
        print('ERROR: No matching distribution found for pip')
        sys.exit(1)
    print('Collecting pip')
    print('Installing collected packages: pip')
    state.write_text('26.3')
elif args[-1].endswith('.whl') and '--no-deps' not in args:
    print('Collecting numpy')
    print('Collecting torch<2.15,>=2.1')
    download('numpy-2.3.0-cp311-cp311-manylinux_2_28_x86_64.whl', 16)
    download('https://download.pytorch.org/whl/cpu/torch-2.14.1%2Bcpu-cp311-cp311-linux_x86_64.whl', 190)
    print('Installing collected packages: numpy, torch')
""")
    script.chmod(0o755)
    return script


def _install(tmp_path: Path, python: Path):
    """Run the installer's pip steps with ``python``: (the log, the (fraction, stage) pairs the bar got, the
    commands run)."""
    log, seen = [], []
    installer._pip_install(installer._Steps(log.append, lambda: False), str(python),
                           tmp_path / "pointsam-0.1.0-py3-none-any.whl", installer.TorchPlan("cpu", None, ""), tmp_path,
                           lambda fraction, stage: seen.append((fraction, stage)))
    return log, seen, (tmp_path / "calls.txt").read_text().splitlines()


def test_an_old_pip_is_updated_and_the_bar_then_follows_torchs_download_without_going_back(tmp_path):
    log, seen, calls = _install(tmp_path, _fake_pip(tmp_path, "23.0.1"))
    assert calls[:3] == ["-m pip --version", "-m pip install --upgrade --disable-pip-version-check pip",
                         "-m pip --version"]
    assert all("--progress-bar raw" in call for call in calls if call.endswith(".whl"))
    torch = [(f, stage) for f, stage in seen if stage.startswith("downloading torch-2.14.1+cpu")]
    assert [stage.split(": ")[-1] for _, stage in torch[1:4]] == ["0 of 190 MB", "95 of 190 MB", "190 of 190 MB"]
    assert torch[1][0] < torch[2][0] < torch[3][0]
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and seen[0][0] >= 0.05, "the update of pip itself moves no bar"
    assert max(f for f, stage in seen if stage != "installing packages") < 0.75
    assert not any(line.startswith("Progress") for line in log) and "Installing collected packages: numpy, torch" in log


def test_when_pip_cannot_be_updated_the_install_goes_on_without_raw_progress(tmp_path):
    log, seen, calls = _install(tmp_path, _fake_pip(tmp_path, "23.0.1", upgrade_fails=True))
    assert not any("--progress-bar" in call for call in calls) and any(call.endswith(".whl") for call in calls)
    assert any("pip could not be updated" in line for line in log)
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 0.75


def test_a_current_pip_is_left_as_it_is_and_read_past_a_warning(tmp_path):
    _, _, calls = _install(tmp_path, _fake_pip(tmp_path, "24.1.2"))
    assert calls[0] == "-m pip --version" and not any(call.endswith(" pip") for call in calls)
    assert calls[1].endswith(".whl") and "--progress-bar raw" in calls[1]
