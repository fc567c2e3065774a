"""``pointsam average``: the weighted mean of two models' weights, both parents recorded, bad input refused in one line."""

import dataclasses

import pytest
import torch
from click.testing import CliRunner

from pointsam_engine.cli import main
from pointsam_engine.sam.model import build_sam, file_sha256, load_model, save_pointsam_checkpoint
from training.model_card import _stage_line, training_stages
from training.pretrain import POINTSAM_TINY

RECIPE = {"config": {"steps": 2, "images_per_step": 1, "objects_per_image": 3, "lr": 1e-3, "warmup": 1, "seed": 0},
          "wall_minutes": 0.1, "machine": "test", "data": "generated scenes", "parameters": 0}


def _model(path, seed, arch=POINTSAM_TINY, provenance=None):
    torch.manual_seed(seed)
    save_pointsam_checkpoint(build_sam(arch), arch, path, name="pointsam-tiny",
                             provenance=RECIPE if provenance is None else provenance)
    return str(path)


@pytest.fixture
def parents(tmp_path):
    base = _model(tmp_path / "base.pt", 0)
    # a later stage that continued the base, as pointsam pretrain --init records it
    later = _model(tmp_path / "later.pt", 1, provenance={
        **RECIPE, "continued_from": {"file": "base.pt", "sha256": file_sha256(base), "provenance": RECIPE}})
    return base, later


def _average(*args):
    return CliRunner().invoke(main, ["average", *map(str, args), "--no-card"])


def test_every_weight_is_the_weighted_mean_and_both_parents_are_recorded(parents, tmp_path):
    base, later = parents
    out = tmp_path / "soup.pt"
    result = _average(later, base, "--weight", "0.7", "-o", out)
    assert result.exit_code == 0, result.output
    soup, a, b = (load_model(str(p), device="cpu") for p in (out, later, base))
    wa, wb = a.sam.state_dict(), b.sam.state_dict()
    moved = 0
    for key, w in soup.sam.state_dict().items():
        torch.testing.assert_close(w, 0.7 * wa[key] + 0.3 * wb[key], rtol=1e-5, atol=1e-6)
        moved += int(not torch.equal(wa[key], wb[key]))
    assert moved > 10  # the parents differ, so the mean is neither of them
    line = _stage_line(soup.provenance)
    assert "0.7 x the stage above + 0.3 x `base.pt`" in line and file_sha256(base)[:12] in line
    assert "the model after stage 1" in line  # base.pt is the model the first recorded stage produced
    assert len(training_stages(soup.provenance)) == 3  # base, later, the average


@pytest.mark.parametrize("weight", ["0", "1", "1.5", "x"])
def test_a_weight_outside_zero_to_one_fails_in_one_line(parents, tmp_path, weight):
    out = tmp_path / "soup.pt"
    result = _average(*parents, "--weight", weight, "-o", out)
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "--weight" in result.output, result.output
    assert not out.exists()


def test_models_of_two_architectures_are_refused_and_nothing_is_written(parents, tmp_path):
    other = _model(tmp_path / "other.pt", 2, arch=dataclasses.replace(POINTSAM_TINY, encoder_depth=2,
                                                                      encoder_global_attn_indexes=(1,)))
    out = tmp_path / "soup.pt"
    result = _average(parents[0], other, "--weight", "0.5", "-o", out)
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "architectures" in result.output, result.output
    assert not out.exists()


def test_a_model_without_a_recipe_is_refused(parents, tmp_path):
    bare = _model(tmp_path / "bare.pt", 3, provenance={})
    result = _average(parents[0], bare, "--weight", "0.5", "-o", tmp_path / "soup.pt")
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "recipe" in result.output, result.output


def test_an_existing_output_or_an_input_as_output_is_kept(parents, tmp_path):
    base, later = parents
    before = file_sha256(base)
    result = _average(later, base, "--weight", "0.5", "-o", base, "--overwrite")
    assert result.exit_code == 2 and "same file" in result.output, result.output
    existing = tmp_path / "mine.pt"
    existing.write_bytes(b"a file the user has")
    result = _average(later, base, "--weight", "0.5", "-o", existing)
    assert result.exit_code == 2 and "--overwrite" in result.output, result.output
    assert existing.read_bytes() == b"a file the user has" and file_sha256(base) == before
