"""SAM 2.1 behind the engine's façade: official checkpoints of each hiera size (random weights, official layout)
load with their type read from the tensors, encode and decode exactly as ``SAM2ImagePredictor`` does, share the
embedding cache and precisions, and segment a generated scene end to end. Without the optional ``sam2`` package,
a SAM 2.1 checkpoint is refused in one line that names the extra to install."""

import dataclasses
import json
import re
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pointsam_engine.cli import main
from pointsam_engine.errors import ModelError
from pointsam_engine.masks import Prompt
from pointsam_engine.sam.model import load_model
from pointsam_engine.sam.sam2_backend import INSTALL, SAM2_ARCHS, detect_sam2_type

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SKIP = 'SAM 2.1 needs the optional sam2 package: pip install -e ".[sam2]"'
OFFICIAL_FILES = {"hiera_t": "sam2.1_hiera_tiny.pt", "hiera_s": "sam2.1_hiera_small.pt",
                  "hiera_b+": "sam2.1_hiera_base_plus.pt", "hiera_l": "sam2.1_hiera_large.pt"}


@pytest.fixture(scope="module")
def sam2():
    return pytest.importorskip("sam2", reason=SKIP)


def official_checkpoint(folder, model_type: str, seed: int = 0):
    """A SAM 2.1 of ``model_type`` with random weights, saved as Meta's files are: ``{"model": state_dict}``."""
    from pointsam_engine.sam.sam2_backend import build_sam2_model

    torch.manual_seed(seed)
    model = build_sam2_model(SAM2_ARCHS[model_type])
    path = folder / OFFICIAL_FILES[model_type]
    torch.save({"model": model.state_dict()}, path)
    return path, model.state_dict()


@pytest.fixture(scope="module")
def official_tiny(sam2, tmp_path_factory):
    return official_checkpoint(tmp_path_factory.mktemp("sam2"), "hiera_t")


@pytest.fixture(scope="module")
def small_sam2(sam2, tmp_path_factory):
    """hiera_t at a 256² input, in the engine's own SAM 2.1 format (fast enough to encode many times)."""
    from pointsam_engine.sam.sam2_backend import build_sam2_model, save_sam2_checkpoint

    torch.manual_seed(3)
    arch = dataclasses.replace(SAM2_ARCHS["hiera_t"], image_size=256)
    path = tmp_path_factory.mktemp("sam2") / "hiera-t-256.pt"
    save_sam2_checkpoint(build_sam2_model(arch), arch, path, name="hiera-t-256")
    return path


@pytest.mark.parametrize("model_type", ["hiera_t", "hiera_s", pytest.param("hiera_b+", marks=pytest.mark.slow),
                                        pytest.param("hiera_l", marks=pytest.mark.slow)])
def test_each_size_in_the_official_layout_loads_with_its_type_read_from_the_weights(sam2, model_type, tmp_path):
    path, state = official_checkpoint(tmp_path, model_type)
    assert detect_sam2_type(state, path) == model_type
    model = load_model(str(path), device="cpu")
    assert (model.model_type, model.image_size, model.arch.model_type) == (model_type, 1024, model_type)
    assert model.label.startswith(f"{path.stem}@") and len(model.sha256) == 64 and not model.sam.training
    loaded = model.sam.state_dict()
    assert loaded.keys() == state.keys()
    for key in ("image_encoder.trunk.blocks.1.attn.qkv.weight", "sam_mask_decoder.iou_prediction_head.layers.2.bias"):
        assert torch.equal(loaded[key], state[key])
    assert load_model(str(path), model_type=model_type, device="cpu").model_type == model_type
    with pytest.raises(ModelError, match=f"--model-type vit_b does not match .* {re.escape(model_type)} weights"):
        load_model(str(path), model_type="vit_b", device="cpu")


def test_the_type_is_read_from_the_hiera_trunk_and_other_files_are_refused():
    for name, arch in SAM2_ARCHS.items():
        fake = {"image_encoder.trunk.patch_embed.proj.weight": torch.empty(arch.embed_dim, 3, 7, 7),
                "no_obj_embed_spatial": torch.empty(1, 64)}
        fake.update({f"image_encoder.trunk.blocks.{i}.norm1.weight": torch.empty(1) for i in range(arch.depth)})
        assert detect_sam2_type(fake, "x.pt") == name
    del fake["no_obj_embed_spatial"]  # SAM 2.0's files lack it
    with pytest.raises(ModelError, match=r"SAM 2 \(2.0\) weights; the engine runs SAM 2.1"):
        detect_sam2_type(fake, "x.pt")
    fake["image_encoder.trunk.patch_embed.proj.weight"] = torch.empty(80, 3, 7, 7)
    with pytest.raises(ModelError, match="width 80 and 48 blocks, which is not a SAM 2.1 size"):
        detect_sam2_type(fake, "x.pt")


def test_without_the_sam2_package_a_sam2_checkpoint_is_refused_in_one_line(tmp_path, monkeypatch):
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": {"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(96, 3, 7, 7)}}, path)
    monkeypatch.setitem(sys.modules, "sam2", None)  # what an install without the extra sees
    monkeypatch.setitem(sys.modules, "sam2.build_sam", None)
    with pytest.raises(ModelError, match=r"SAM 2\.1 checkpoint but the sam2 package is not installed") as refused:
        load_model(str(path), device="cpu")
    assert str(refused.value).endswith(f"install it with {INSTALL}") and "\n" not in str(refused.value)
    from tests.conftest import write_points, write_raster

    raster = write_raster(tmp_path / "r.tif", np.zeros((3, 32, 32), dtype=np.uint8))
    points = write_points(tmp_path / "p.gpkg", [(500010.0, 3999990.0)])
    result = CliRunner().invoke(main, ["segment", str(raster), str(points), "-o", str(tmp_path / "o.gpkg"),
                                       "--model", str(path)])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and INSTALL in result.output
    assert not (tmp_path / "o.gpkg").exists()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # SAM2ImagePredictor's own
def test_embedding_and_masks_are_sam2_image_predictors(official_tiny):
    """The engine's encoder and decoder on a 1024² chip against ``SAM2ImagePredictor`` on the same image
    (the engine's pixel centres are at i + 0.5, the predictor's at i)."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from pointsam_engine.sam.decode import decode, embed

    model = load_model(str(official_tiny[0]), device="cpu")
    image = np.random.default_rng(1).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    predictor = SAM2ImagePredictor(model.sam)
    with torch.inference_mode():
        predictor.set_image(image)
        ours = embed(model.sam, image)
        theirs = [predictor._features["image_embed"], *predictor._features["high_res_feats"]]
        for a, b in zip(ours, theirs):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4)
        _, iou, low = predictor.predict(np.array([[400.0, 500.0]]), np.array([1]), multimask_output=True,
                                        return_logits=True)
        logits, our_iou = decode(model.sam, ours, [Prompt(np.array([[400.5, 500.5]]), np.array([1]))])
        assert logits.shape == (1, 3, 256, 256)
        assert np.allclose(logits[0].clamp(-32, 32).numpy(), low, atol=1e-3) and np.allclose(our_iou[0], iou, atol=1e-5)
        box = np.array([300.0, 300.0, 600.0, 700.0])
        _, iou, low = predictor.predict(np.array([[400.0, 500.0], [450.0, 450.0]]), np.array([1, 0]), box=box,
                                        multimask_output=False, return_logits=True)
        prompt = Prompt(np.array([[400.5, 500.5], [450.5, 450.5]]), np.array([1, 0]), box=box + 0.5)
        logits, our_iou = decode(model.sam, ours, [prompt, prompt])  # a batch of two: the image is repeated
        assert logits.shape == (2, 1, 256, 256)
        assert np.allclose(logits[1].clamp(-32, 32).numpy(), low, atol=1e-3) and np.allclose(our_iou[1], iou, atol=1e-5)


def test_chip_predictor_pads_small_chips_and_caches_the_whole_embedding(small_sam2, tmp_path):
    from pointsam_engine.sam.cache import EmbeddingCache
    from pointsam_engine.sam.predict import ChipPredictor

    model = load_model(str(small_sam2), device="cpu")
    assert (model.model_type, model.image_size, model.name) == ("hiera_t", 256, "hiera-t-256")
    image = np.random.default_rng(2).integers(0, 255, (200, 256, 3), dtype=np.uint8)
    prompts = [Prompt(np.array([[60.5, 70.5]]), np.array([1])), Prompt(np.array([[60.5, 70.5], [150, 150]]), np.array([1, 0])),
               Prompt(np.array([[100.5, 100.5]]), np.array([1]), box=np.array([80.0, 80.0, 140.0, 130.0]))]
    first = ChipPredictor(model, EmbeddingCache(64, str(tmp_path)))
    assert first.set_chip(image, key="chip") is True
    masks = first.predict(prompts)
    assert all(m is None or m.logits.shape[0] + m.row0 <= 200 for m in masks)
    again = ChipPredictor(model, EmbeddingCache(64, str(tmp_path)))  # a new run: the embedding comes from disk
    assert again.set_chip(image, key="chip") is False and again.cache.disk_hits == 1
    assert [p.name for p in tmp_path.rglob("*.np*")] == ["chip.npz"]
    for a, b in zip(masks, again.predict(prompts)):  # equal up to float rounding: the fresh embedding's tensors
        assert (a is None) == (b is None)  # are laid out as the encoder left them, the cached ones contiguously
        if a is not None:
            np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)
            assert a.score == pytest.approx(b.score, abs=1e-6)


def test_precisions_run_the_hiera_encoder(small_sam2):
    from pointsam_engine.sam.decode import embed
    from pointsam_engine.sam.precision import encoder_runner

    model = load_model(str(small_sam2), device="cpu")
    image = np.random.default_rng(4).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    with torch.inference_mode():
        reference = embed(model.sam, image)
        for precision in ("bf16", "int8"):
            other = embed(model.sam, image, encode=encoder_runner(model.sam, precision, "cpu"))
            for a, b in zip(reference, other):
                assert b.dtype == torch.float32 and a.shape == b.shape
                assert _cosine(a, b) > 0.95, precision


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def test_a_generated_scene_segments_end_to_end_from_the_cli(official_tiny, tmp_path):
    from pointsam_engine.demo.scenes import generate

    scene = generate("buildings", tmp_path, size=256, seed=5)
    report = tmp_path / "run.json"
    result = CliRunner().invoke(main, ["segment", str(scene["raster"]), str(scene["points"]), "-o", str(tmp_path / "o.gpkg"),
                                       "--model", str(official_tiny[0]), "--model-type", "hiera_t", "--report", str(report),
                                       "-q"])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["model"].startswith("sam2.1_hiera_tiny@") and data["chip_size"] == 1024 and data["encoder_passes"] >= 1
    import geopandas as gpd

    clicks = len(gpd.read_file(scene["points"]))
    assert data["instances"] + data["skipped"] == clicks
    instances = gpd.read_file(tmp_path / "o.gpkg", layer="instances")
    assert len(instances) == data["instances"] and set(instances["model"]) <= {data["model"]}


def test_the_api_lists_sam2_models_and_answers_clicks_on_one_chip(small_sam2, tmp_path):
    import httpx

    from pointsam_engine.api.app import create_app
    from pointsam_engine.api.engine import Engine
    from pointsam_engine.config import SegmentConfig
    from pointsam_engine.demo.scenes import generate
    from tests.engine.api.serve_process import scene_click
    from tests.engine.api.served import served

    scene = generate("buildings", tmp_path, size=256, seed=6)
    click, _, crs = scene_click(scene)
    engine = Engine(SegmentConfig(model=str(small_sam2), device="cpu", cache_mb=64))
    with served(create_app(engine, "t")) as url, httpx.Client(base_url=url, headers={"Authorization": "Bearer t"},
                                                             timeout=60) as http:
        listing = http.get("/v1/models").json()
        assert listing["loaded"]["model_type"] == "hiera_t" and listing["loaded"]["image_size"] == 256
        assert {"hiera_t", "hiera_s", "hiera_b+", "hiera_l"} <= {entry["name"] for entry in listing["catalog"]}
        answers = [http.post("/v1/predict", json={"raster": str(scene["raster"]), "positive": [[x, click.y]],
                                                  "crs": crs.to_string()})
                   for x in (click.x, click.x + 0.5)]
    assert [a.status_code for a in answers] == [200, 200], answers[0].text
    assert [a.json()["encoded"] for a in answers] == [True, False]  # the second click reuses the chip
    assert answers[0].json()["object"]["properties"]["model"].startswith("hiera-t-256@")
