"""``pointsam_engine.sam`` is the only part of the engine that imports torch; the CLI loads other packages'
commands (``training``) only when one is run, and reports a broken one instead of hiding it."""

import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint

import pytest
from click.testing import CliRunner

from pointsam_engine import commands
from pointsam_engine.cli import main

BLOCK_TORCH = """
import sys

class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ImportError(f"torch is blocked in this test ({name})")
        return None

sys.meta_path.insert(0, BlockTorch())
"""

IMPORT_ALL_BUT_SAM = """
import importlib
import pkgutil

import pointsam_engine

names = [m.name for m in pkgutil.walk_packages(pointsam_engine.__path__, "pointsam_engine.")
         if not m.name.startswith("pointsam_engine.sam.") and not m.name.endswith(".__main__")]
for name in names:
    importlib.import_module(name)
assert len(names) > 20, names
"""

RUN_HELP = """
from pointsam_engine.cli import main

for args in (["--help"], ["evaluate", "--help"], ["segment", "--help"]):
    try:
        main(args)
    except SystemExit as exc:
        assert exc.code == 0, (args, exc.code)
import pointsam_engine.api.schemas
"""


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


def test_every_engine_module_outside_sam_the_cli_help_and_the_schemas_work_without_torch():
    done = _python(BLOCK_TORCH + IMPORT_ALL_BUT_SAM + RUN_HELP + "\nassert 'torch' not in sys.modules\n")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Commands:" in done.stdout and "pretrain" in done.stdout, "training's commands are listed without torch"


def test_the_block_itself_stops_torch():
    done = _python(BLOCK_TORCH + "import pointsam_engine.sam.model\n")
    assert done.returncode != 0 and "torch is blocked" in done.stderr


def test_help_and_evaluate_do_not_import_torch_or_load_training_commands():
    done = _python(RUN_HELP + "\nimport sys\nprint(sorted(m for m in ('torch', 'training.cli') if m in sys.modules))\n")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.fixture
def plugins(monkeypatch, tmp_path):
    """Replace the ``pointsam.commands`` entry points by the given ``name -> "module:function"`` values."""
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "broken_plugin.py").write_text("import a_dependency_that_is_not_installed\n\n"
                                               "def command():\n    '''Do something useful.'''\n")

    def use(**values):
        points = [EntryPoint(name, value, commands.GROUP) for name, value in values.items()]
        monkeypatch.setattr(commands, "entry_points", lambda group: points if group == commands.GROUP else [])
        commands._installed.cache_clear()

    yield use
    commands._installed.cache_clear()


def test_a_broken_plugin_is_listed_and_running_it_is_one_error_line(plugins):
    plugins(broken="broken_plugin:command")
    listed = CliRunner().invoke(main, ["--help"])
    assert listed.exit_code == 0 and "broken    Do something useful." in listed.output
    result = CliRunner().invoke(main, ["broken"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the `pointsam broken` command cannot be loaded")
    assert "a_dependency_that_is_not_installed" in lines[0] and "reinstall" in lines[0]


def test_a_plugin_whose_package_is_missing_is_left_out_silently(plugins):
    plugins(ghost="package_that_is_not_installed.cli:command")
    listed = CliRunner().invoke(main, ["--help"])
    assert listed.exit_code == 0 and "ghost" not in listed.output and "segment" in listed.output
    result = CliRunner().invoke(main, ["ghost"])
    assert result.exit_code == 2 and "No such command 'ghost'" in result.stderr
