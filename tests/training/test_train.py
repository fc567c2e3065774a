"""``pointsam train``: calibrated teacher prompts, a few-step run the engine can use, exact resume, bad inputs."""

import geopandas as gpd
import numpy as np
import pytest
import shapely
import torch
from click.testing import CliRunner

from pointsam_engine.cli import main
from pointsam_engine.errors import ModelError, OutputError, PointsError
from pointsam_engine.masks import MaskPatch, Prompt
from pointsam_engine.sam.adapter import apply_adapter, read_adapter
from pointsam_engine.sam.model import load_model
from pointsam_engine.scenes import render, write_scene
from training import selftrain
from training import train as train_module
from training.augment import Dihedral
from training.selftrain import SelfTrainOptions, teacher_masks
from training.train import TrainConfig, train
from training.validation import area_growth, object_areas

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("region")
    return write_scene(render("ships", 384, seed=7301), folder, "ships")


def _config(scene, tiny_model, output, **changes):
    options = dict(rasters=[str(scene["raster"])], points=[str(scene["points"])], output=str(output),
                   model=str(tiny_model), steps=6, val_fraction=0.0, checkpoint_every=3, bank_size=4, match_interval=2,
                   target_chips=2, selftrain=SelfTrainOptions(max_objects=4))
    options.update(changes)
    return TrainConfig(**options)


def _lora(path):
    return read_adapter(path)["state_dict"]


def test_calibration_gives_an_overlapping_object_its_neighbours_clicks_as_negatives():
    square = np.full((8, 8), -5.0)
    square[1:6, 1:6] = 5.0
    first = [MaskPatch(0, 0, square, 0.9), MaskPatch(0, 0, square.copy(), 0.9), MaskPatch(0, 0, -square, 0.9)]
    asked = []

    def fake_masks(prompts):
        if not asked:
            asked.append(None)
            return first
        asked.append(prompts)
        return [MaskPatch(0, 0, np.full((8, 8), -1.0), 0.5) for _ in prompts]

    positives = [np.array([[4.0, 4.0]]), np.array([[6.0, 6.0]]), np.array([[14.0, 14.0]])]  # chip px; masks at 1/2
    prompts = [Prompt(p, np.ones(1, int)) for p in positives]
    patches, neighbours = teacher_masks(fake_masks, prompts, positives, np.array([0, 2]), SelfTrainOptions(), scale=2.0)
    assert neighbours == {0: [1]}  # object 2 does not overlap anyone; object 1 is not trained
    again = asked[1][0]
    assert again.points.tolist() == [[4.0, 4.0], [6.0, 6.0]] and again.labels.tolist() == [1, 0]
    assert (patches[0].logits < 0).all() and patches[1] is first[1]


def test_a_few_steps_write_an_adapter_that_the_engine_applies(scene, tiny_model, tmp_path):
    output = tmp_path / "region.adapter.pt"
    summary = train(_config(scene, tiny_model, output, val_fraction=0.3, val_every=3,
                            val_polygons=[str(scene["truth"])]), echo=lambda _: None)
    assert output.is_file() and (tmp_path / "region.csv").is_file() and (tmp_path / "region.png").stat().st_size > 1000
    history = read_adapter(output)["history"]
    assert [h["step"] for h in history] == [0, 3, 6] and all(0 <= h["miou"] <= 1 for h in history)
    best = max(history, key=lambda h: h["miou"])
    assert summary["best"]["step"] == best["step"] and read_adapter(output)["config"]["kept_step"] == best["step"]
    header = (tmp_path / "region.csv").read_text().splitlines()[0].split(",")
    assert {"loss", "focal", "dice", "iou_mse", "prototype", "miou", "single_click_share", "area_vs_base"} <= set(header)
    assert history[0]["area_vs_base"] == 1.0  # step 0 is the base model, matched object by object


def test_area_growth_is_the_median_ratio_over_the_objects_both_runs_hold():
    squares = gpd.GeoDataFrame({"instance": ["a", "b", "c", "c"]},
                               geometry=[shapely.box(0, 0, 2, 2), shapely.box(0, 0, 1, 1), shapely.box(0, 0, 3, 1),
                                         shapely.box(5, 5, 6, 6)])
    areas = object_areas(squares, prefix="0:")
    assert areas == {"0:a": 4.0, "0:b": 1.0, "0:c": 4.0}  # an object's parts add up
    base = {"0:a": 2.0, "0:b": 1.0, "0:c": 1.0, "0:gone": 3.0}
    assert area_growth(areas, base) == 2.0  # ratios 2, 1, 4; "gone" has no polygon now
    assert area_growth(base, base) == 1.0
    assert np.isnan(area_growth(areas, {})) and object_areas(squares.iloc[:0], prefix="0:") == {}


def test_resume_after_ctrl_c_equals_the_uninterrupted_run(scene, tiny_model, tmp_path, monkeypatch):
    whole = tmp_path / "whole.adapter.pt"
    train(_config(scene, tiny_model, whole), echo=lambda _: None)
    calls = {"n": 0}
    real_step = train_module.selftrain_step

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "selftrain_step", interrupted)
    broken = tmp_path / "broken.adapter.pt"
    with pytest.raises(KeyboardInterrupt):
        train(_config(scene, tiny_model, broken), echo=lambda _: None)
    assert not broken.exists() and (tmp_path / "broken.ckpt").is_file()
    monkeypatch.setattr(train_module, "selftrain_step", real_step)
    train(_config(scene, tiny_model, broken, resume=True), echo=lambda _: None)
    base, adapted = load_model(str(tiny_model), device="cpu"), apply_adapter(load_model(str(tiny_model), device="cpu"), whole)
    image = torch.rand(1, 3, base.image_size, base.image_size)
    with torch.no_grad():  # without validation the last weights are kept, and they moved the encoder's output
        assert not torch.allclose(base.sam.image_encoder(image), adapted.sam.image_encoder(image), atol=1e-4)
    a, b = _lora(whole), _lora(broken)
    assert a.keys() == b.keys() and any(v.abs().sum() > 0 for k, v in a.items() if "_b." in k)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_bad_inputs_fail_in_one_line_and_write_nothing(scene, tiny_model, tmp_path):
    far = tmp_path / "far.gpkg"
    import geopandas as gpd
    import shapely

    gpd.GeoDataFrame(geometry=[shapely.Point(0, 0)], crs="EPSG:32633").to_file(far)
    out = tmp_path / "x.adapter.pt"
    with pytest.raises(PointsError, match="no point of .* lies inside"):
        train(_config(scene, tiny_model, out, points=[str(far)]), echo=lambda _: None)
    with pytest.raises(ModelError):
        train(_config(scene, tiny_model, out, model=str(tmp_path / "missing.pt")), echo=lambda _: None)
    with pytest.raises(OutputError, match="does not exist"):
        train(_config(scene, tiny_model, tmp_path / "no" / "x.adapter.pt"), echo=lambda _: None)
    assert not out.exists()
    result = CliRunner().invoke(main, ["train", "--raster", str(scene["raster"]), "--points", str(far), "-o", str(out),
                                       "--model", str(tiny_model)])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and result.output.startswith("error: ")


def test_mask_supervised_upper_bound_reads_each_objects_own_polygon(scene):
    from pointsam_engine.config import SegmentConfig
    from training.regions import load_region

    region = load_region(0, scene["raster"], scene["points"], SegmentConfig(), 128, val_fraction=0.0,
                         rng=np.random.default_rng(0), truth=str(scene["truth"]))
    checked = 0
    for chip in region.chips:
        assert len(chip.truth) == len(chip.positives)
        for mask, clicks in zip(chip.truth, chip.positives):
            x, y = clicks[0]
            if 0 <= x < 128 and 0 <= y < 128:
                assert mask[int(y), int(x)]  # the polygon holding the click
                checked += 1
        others = np.sum(chip.truth, axis=0)
        assert others.max() <= 1  # truth polygons do not overlap
    assert checked >= len(region.instances)


@pytest.mark.parametrize("blocks", ["0-99999999999", "1-x", "-3"])
def test_block_lists_that_make_no_sense_fail_in_one_line_before_anything_runs(scene, tiny_model, tmp_path, blocks):
    out = tmp_path / "x.adapter.pt"
    result = CliRunner().invoke(main, ["train", "--raster", str(scene["raster"]), "--points", str(scene["points"]),
                                       "-o", str(out), "--model", str(tiny_model), "--blocks", blocks])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "--blocks" in result.output, result.output
    assert not out.exists()


def test_the_anchor_is_the_base_models_masks_whatever_the_adapter_has_learnt():
    from pointsam_engine.sam.lora import add_lora
    from pointsam_engine.sam.model import DEFAULT_MODEL

    scene = render("buildings", 256, seed=7302)
    image = np.ascontiguousarray(scene.image.transpose(1, 2, 0))
    prompts = [Prompt(c[None], np.ones(1, int)) for c in scene.clicks[:6]]
    sam = load_model(DEFAULT_MODEL, device="cpu").sam.eval()
    with torch.no_grad():
        before = [p.logits > 0 for p in selftrain.kept_masks(sam, selftrain.embed(sam, image), prompts)]
        torch.manual_seed(0)  # A's initialisation
        add_lora(sam, rank=2)
        for name, p in sam.named_parameters():
            if "lora_" in name and "_b." in name:
                p.normal_(0, 3.0, generator=torch.Generator().manual_seed(3))
        adapted = [p.logits > 0 for p in selftrain.kept_masks(sam, selftrain.embed(sam, image), prompts)]
    anchor = selftrain.base_masks(sam, image, prompts).numpy()
    assert np.array_equal(anchor, np.stack(before))
    assert sum(int((a != b).sum()) for a, b in zip(adapted, before)) > 0.02 * sum(int(b.sum()) for b in before)


@pytest.mark.parametrize("view", [Dihedral(True, False, False), Dihedral(False, True, True), Dihedral(True, True, False)])
def test_a_teacher_of_all_eight_views_gives_the_same_masks_whichever_weak_view_it_starts_from(view):
    from pointsam_engine.sam.model import DEFAULT_MODEL

    scene = render("buildings", 256, seed=7303)
    image = np.ascontiguousarray(scene.image.transpose(1, 2, 0))
    prompts = [Prompt(c[None], np.ones(1, int)) for c in scene.clicks[:4]]
    moved = [Prompt(view.points(p.points, 256), p.labels) for p in prompts]
    sam = load_model(DEFAULT_MODEL, device="cpu").sam.eval()
    with torch.no_grad():
        here = selftrain.TeacherViews(sam, image, 8).masks(prompts)
        there = selftrain.TeacherViews(sam, view.image(image), 8).masks(moved)
        single = selftrain.TeacherViews(sam, image, 1).masks(prompts)
    for a, b in zip(here, there):  # a mix-up of x and y in prompts or logits breaks this
        np.testing.assert_allclose(a.logits, view.restore(b.logits), atol=1e-4)
        assert a.score == pytest.approx(b.score, abs=1e-5)
    assert any((a.mask != s.mask).any() for a, s in zip(here, single))  # the views do change the pseudo-labels


def test_a_teacher_takes_one_to_eight_views():
    with pytest.raises(ValueError, match="teacher_views"):
        selftrain.TeacherViews(None, np.zeros((8, 8, 3), np.uint8), 9)


def test_the_anchor_weight_adds_the_anchor_term_to_the_step_loss(scene):
    from pointsam_engine.config import SegmentConfig
    from pointsam_engine.sam.lora import add_lora
    from pointsam_engine.sam.model import DEFAULT_MODEL
    from training.regions import load_region

    sam = load_model(DEFAULT_MODEL, device="cpu").sam
    add_lora(sam, rank=2)
    region = load_region(0, scene["raster"], scene["points"], SegmentConfig(), 256, val_fraction=0.0,
                         rng=np.random.default_rng(0))
    chip = next(c for c in region.chips if len(c.owned))
    losses = {}
    for weight in (0.0, 2.0):
        opts = SelfTrainOptions(max_objects=4, prototypes=False, anchor_weight=weight)
        losses[weight] = selftrain.selftrain_step(sam, chip, opts, np.random.default_rng(5))
    assert "anchor" not in losses[0.0].terms and losses[2.0].terms["anchor"] > 0
    total = losses[0.0].terms["loss"] + 2.0 * losses[2.0].terms["anchor"]
    assert losses[2.0].terms["loss"] == pytest.approx(total, rel=1e-5)


def test_the_self_training_focal_term_weighs_object_and_background_alike():
    from training.losses import focal_loss

    logits, target = torch.randn(2, 16, 16), (torch.rand(2, 16, 16) > 0.7).float()
    flipped = focal_loss(-logits, 1 - target, alpha=selftrain.FOCAL_ALPHA)
    assert torch.allclose(focal_loss(logits, target, alpha=selftrain.FOCAL_ALPHA), flipped)



def test_two_processes_with_ddp_train_one_adapter(scene, tiny_model, tmp_path):
    """The multi-GPU path (``--strategy ddp``), run on the CPU with two processes and gloo."""
    import subprocess
    import sys
    from pathlib import Path

    output = tmp_path / "ddp.adapter.pt"
    command = [sys.executable, str(Path(sys.executable).with_name("pointsam")), "train", "--raster",
               str(scene["raster"]), "--points", str(scene["points"]), "--model", str(tiny_model), "-o", str(output),
               "--steps", "4", "--val-fraction", "0", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Starting with 2 processes" in done.stderr
    adapter = read_adapter(output)
    assert adapter["config"]["kept_step"] == 4 and adapter["config"]["strategy"] == "ddp"
    assert any(v.abs().sum() > 0 for k, v in adapter["state_dict"].items() if "_b." in k)  # the adapter learnt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp.adapter.pt", "ddp.ckpt", "ddp.csv", "ddp.png"]


def test_the_api_train_job_defaults_are_pointsam_trains():
    from pointsam_engine.api.schemas import TrainJobRequest
    from training.cli import train as train_command

    cli = {p.name: p.default for p in train_command.params if not (p.multiple or p.required or p.is_flag)}
    api = {name: f.default for name, f in TrainJobRequest.model_fields.items() if name in cli}
    assert {"steps", "lr", "seed", "rank", "val_fraction", "background", "prototype_weight", "anchor_weight"} <= set(api)
    assert api == {name: cli[name] for name in api}
