import pytest
import torch

from pointsam_engine.errors import ModelError
from pointsam_engine.sam.model import OFFICIAL_ARCHS, SamArch, build_sam, detect_model_type, load_model, resolve_model_path
from tests.conftest import TINY_ARCH


@pytest.fixture(scope="module")
def official_vit_b(tmp_path_factory):
    """A full-size vit_b, randomly initialised, saved exactly as the official sam_vit_b_01ec64.pth is laid out."""
    torch.manual_seed(1)
    sam = build_sam(OFFICIAL_ARCHS["vit_b"])
    path = tmp_path_factory.mktemp("official") / "sam_vit_b_01ec64.pth"
    torch.save(sam.state_dict(), path)
    return path, sam.state_dict()


def test_official_vit_b_layout_loads_through_the_model_path(official_vit_b):
    path, state = official_vit_b
    assert not any(k.startswith("pixel_") for k in state)  # official files carry no pixel buffers
    model = load_model(str(path), device="cpu")
    assert model.model_type == "vit_b" and model.image_size == 1024
    assert model.label.startswith("sam_vit_b_01ec64@") and len(model.sha256) == 64
    loaded = model.sam.state_dict()
    for key in ("image_encoder.blocks.11.attn.qkv.weight", "mask_decoder.iou_prediction_head.layers.2.bias"):
        assert torch.equal(loaded[key], state[key])
    assert load_model(str(path), model_type="vit_b", device="cpu").model_type == "vit_b"


def _resident_mb_of(path) -> float:
    """How much of ``path`` this process has mapped and resident (its mappings' Rss in /proc/self/smaps)."""
    resident, inside = 0, False
    for line in open("/proc/self/smaps"):
        head = line.split()
        if "-" in head[0] and len(head) >= 5 and ":" in head[3]:  # a mapping's header line
            inside = len(head) >= 6 and head[5] == str(path)
        elif inside and head[0] == "Rss:":
            resident += int(head[1])
    return resident / 1024


def test_weights_are_mapped_from_the_file_and_read_only_when_used(official_vit_b):
    """The torch image encoder's weights (~360 MB for vit_b) cost no memory while OpenVINO runs the encoder."""
    path, _ = official_vit_b
    model = load_model(str(path), device="cpu")
    assert _resident_mb_of(path) < 40, "the encoder's weights were read at load"
    with torch.inference_mode():
        model.sam.image_encoder.blocks[0].attn.qkv.weight.sum()
    assert _resident_mb_of(path) > 5, "the weights are mapped from the checkpoint file"


def test_a_checkpoint_in_torchs_legacy_format_loads_as_the_zip_one(official_vit_b, tmp_path):
    path, state = official_vit_b
    legacy = tmp_path / "sam_vit_b_legacy.pth"
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    loaded = load_model(str(legacy), device="cpu").sam.state_dict()
    assert torch.equal(loaded["image_encoder.blocks.11.attn.qkv.weight"], state["image_encoder.blocks.11.attn.qkv.weight"])


def test_model_type_mismatch_is_refused(official_vit_b):
    path, _ = official_vit_b
    with pytest.raises(ModelError, match="--model-type vit_h does not match .* vit_b"):
        load_model(str(path), model_type="vit_h", device="cpu")


def test_registered_name_is_found_in_the_models_folder(official_vit_b, monkeypatch, tmp_path):
    path, _ = official_vit_b
    monkeypatch.setenv("POINTSAM_MODELS", str(path.parent))
    assert resolve_model_path("vit_b") == path
    assert resolve_model_path("sam_vit_b") == path
    monkeypatch.setenv("POINTSAM_MODELS", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ModelError, match="sam_vit_l_0b3195.pth is not in"):
        resolve_model_path("vit_l")


def test_type_is_detected_from_tensor_shapes():
    for name, arch in OFFICIAL_ARCHS.items():
        fake = {"image_encoder.patch_embed.proj.weight": torch.empty(arch.encoder_embed_dim, 3, 16, 16)}
        fake.update({f"image_encoder.blocks.{i}.norm1.weight": torch.empty(1) for i in range(arch.encoder_depth)})
        assert detect_model_type(fake, "x.pth") == name


def test_pointsam_format_records_its_architecture(tiny_model):
    model = load_model(str(tiny_model), device="cpu")
    assert model.arch == SamArch(**TINY_ARCH) and model.image_size == 256
    assert model.name == "tiny-test" and model.provenance == {"note": "random weights"}
    with pytest.raises(ModelError, match="drop --model-type"):
        load_model(str(tiny_model), model_type="vit_b", device="cpu")


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint", "not a SAM checkpoint"),
    (None, "not a SAM checkpoint"),  # a torch file holding something else
])
def test_files_that_are_not_sam_checkpoints(tmp_path, content, message):
    path = tmp_path / "model.pth"
    if content is None:
        torch.save({"conv.weight": torch.zeros(2, 2)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        load_model(str(path), device="cpu")
    with pytest.raises(ModelError, match="does not exist"):
        load_model(str(tmp_path / "missing.pth"), device="cpu")


def test_cli_segments_with_the_official_checkpoint_layout(official_vit_b, tmp_path):
    import json

    import numpy as np
    from click.testing import CliRunner

    from pointsam_engine.cli import main
    from tests.conftest import write_points, write_raster

    path, _ = official_vit_b
    raster = write_raster(tmp_path / "r.tif", np.random.default_rng(0).integers(0, 255, (3, 96, 96), dtype=np.uint8))
    points = write_points(tmp_path / "p.gpkg", [(500024.0, 3999976.0)])
    report = tmp_path / "run.json"
    result = CliRunner().invoke(main, ["segment", str(raster), str(points), "-o", str(tmp_path / "o.gpkg"),
                                       "--model", str(path), "--model-type", "vit_b", "--report", str(report), "-q"])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["model"].startswith("sam_vit_b_01ec64@") and data["chip_size"] == 1024
    assert data["encoder_passes"] == 1 and data["instances"] + data["skipped"] == 1
