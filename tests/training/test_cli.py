"""``pointsam train``'s options: block lists, and the HTTP API's train jobs taking the same defaults."""

import pytest
from click.testing import CliRunner

from pointsam_engine.cli import main


@pytest.mark.parametrize("blocks", ["0-99999999999", "1-x", "-3", "99"])  # 99: past the encoder's blocks
def test_block_lists_that_make_no_sense_fail_in_one_line_before_anything_runs(scene, tiny_model, tmp_path, blocks):
    out = tmp_path / "x.adapter.pt"
    result = CliRunner().invoke(main, ["train", "--raster", str(scene["raster"]), "--points", str(scene["points"]),
                                       "-o", str(out), "--model", str(tiny_model), "--blocks", blocks])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "--blocks" in result.output, result.output
    assert not out.exists()


def test_the_api_train_job_defaults_are_pointsam_trains():
    from pointsam_engine.api.schemas import TrainJobRequest
    from training.cli import train as train_command

    cli = {p.name: p.default for p in train_command.params if not (p.multiple or p.required or p.is_flag)}
    api = {name: f.default for name, f in TrainJobRequest.model_fields.items() if name in cli}
    assert {"steps", "lr", "seed", "rank", "val_fraction", "background", "prototype_weight", "anchor_weight"} <= set(api)
    assert api == {name: cli[name] for name in api}
