"""Region adapters: saved by training, applied by the engine to their own base model only, merged by export."""

import pyogrio
import pytest
import torch
from click.testing import CliRunner

from pointsam_engine.cli import main
from pointsam_engine.errors import ModelError
from pointsam_engine.sam.adapter import apply_adapter, save_adapter
from pointsam_engine.sam.lora import add_lora
from pointsam_engine.sam.model import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def adapter(tiny_model, tmp_path):
    """An adapter for ``tiny_model`` whose LoRA B matrices are non-zero, so it changes the encoder."""
    base = load_model(str(tiny_model), device="cpu")
    add_lora(base.sam, rank=2)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in base.sam.named_parameters():
            if "lora_" in name and name.endswith("_b.weight"):
                p.normal_(0, 0.2)
    path = save_adapter(base.sam, tmp_path / "region.adapter.pt", base=base, config={"steps": 1}, history=[])
    return path, base.sam


def _embedding(sam):
    image = torch.rand(1, 3, sam.image_encoder.img_size, sam.image_encoder.img_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return sam.image_encoder(image)


def test_applied_adapter_gives_the_trained_model_and_names_itself(tiny_model, adapter):
    path, trained = adapter
    plain = load_model(str(tiny_model), device="cpu")
    adapted = apply_adapter(load_model(str(tiny_model), device="cpu"), path)
    assert torch.allclose(_embedding(adapted.sam), _embedding(trained), atol=1e-6)
    assert not torch.allclose(_embedding(adapted.sam), _embedding(plain.sam), atol=1e-3)
    assert adapted.label.startswith(plain.label + "+region@") and plain.adapter is None


def test_adapter_for_another_base_is_refused(adapter, tmp_path):
    from pointsam_engine.sam.model import SamArch, build_sam, save_pointsam_checkpoint
    from tests.conftest import TINY_ARCH

    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    save_pointsam_checkpoint(build_sam(SamArch(**TINY_ARCH)), SamArch(**TINY_ARCH), other, name="other")
    with pytest.raises(ModelError, match="was trained on tiny-test@.*pass that base model with --model"):
        apply_adapter(load_model(str(other), device="cpu"), adapter[0])


def test_a_model_file_is_not_an_adapter(tiny_model):
    with pytest.raises(ModelError, match="is not a PointSAM adapter"):
        apply_adapter(load_model(str(tiny_model), device="cpu"), tiny_model)


def test_segment_with_adapter_names_it_on_every_feature(tiny_model, adapter, blocks_scene, tmp_path):
    raster, points, _, _ = blocks_scene
    out = tmp_path / "out.gpkg"
    result = CliRunner().invoke(main, ["segment", str(raster), str(points), "-o", str(out), "-q", "--model", str(tiny_model),
                                       "--adapter", str(adapter[0])])
    assert result.exit_code == 0, result.output
    models = set(pyogrio.read_dataframe(out, layer="instances")["model"])
    assert len(models) == 1 and "+region@" in models.pop()


def test_export_merges_adapter_into_one_model_file(tiny_model, adapter, tmp_path):
    merged = tmp_path / "merged.pt"
    args = ["export", "--model", str(tiny_model), "--adapter", str(adapter[0]), "-o", str(merged)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    loaded = load_model(str(merged), device="cpu")
    assert torch.allclose(_embedding(loaded.sam), _embedding(adapter[1]), atol=1e-5)
    assert "+region@" in loaded.provenance["merged_from"]
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "exists; pass --overwrite" in again.output


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path):
    from pointsam_engine.output import atomic_path

    target = tmp_path / "model.pt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and list(tmp_path.iterdir()) == [target]


def _adapter_trained_with(tmp_path, tiny_model, **normalization):
    """An adapter of ``tiny_model`` whose training raster was normalized with ``normalization``."""
    base = load_model(str(tiny_model), device="cpu")
    add_lora(base.sam, rank=2)
    recorded = {"bands": (1, 1, 1), "method": "percentile", "percentiles": (2.0, 98.0), "low": (0.0,) * 3,
                "high": (30.0,) * 3, "sar_db": False, "nodata": None, **normalization}
    return save_adapter(base.sam, tmp_path / "sar.adapter.pt", base=base, config={"steps": 1}, history=[],
                        normalization={"training.tif": recorded})


def test_an_adapter_trained_with_sar_db_is_refused_under_the_default_stretch(tiny_model, blocks_scene, tmp_path):
    raster, points, _, _ = blocks_scene
    path = _adapter_trained_with(tmp_path, tiny_model, sar_db=True)
    args = ["segment", str(raster), str(points), "-q", "--model", str(tiny_model), "--adapter", str(path)]
    refused = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "refused.gpkg")])
    assert refused.exit_code == 2
    lines = refused.stderr.strip().splitlines()
    assert lines == [f"error: adapter {path} was trained with --stretch 2,98 --sar-db, but this run uses --stretch 2,98; "
                     "pass --stretch 2,98 --sar-db to match it"]
    assert not (tmp_path / "refused.gpkg").exists()
    matched = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "matched.gpkg"), "--sar-db"])
    assert matched.exit_code == 0, matched.output


@pytest.mark.parametrize("stretch, sar_db, refused", [((2.0, 98.0), False, False), ("minmax", False, True),
                                                      ((1.0, 99.0), False, True), ((2.0, 98.0), True, True)])
def test_the_normalization_check_compares_stretch_and_sar_db(tiny_model, tmp_path, stretch, sar_db, refused):
    from pointsam_engine.errors import OptionError
    from pointsam_engine.sam.adapter import load_adapted_model

    path = _adapter_trained_with(tmp_path, tiny_model, bands=(3, 2, 1))  # other band numbers: not compared
    load = lambda: load_adapted_model(str(tiny_model), str(path), device="cpu", stretch=stretch, sar_db=sar_db)  # noqa: E731
    if refused:
        with pytest.raises(OptionError, match="was trained with --stretch 2,98, but this run uses"):
            load()
    else:
        assert load().adapter.startswith("sar@")
    assert load_adapted_model(str(tiny_model), str(path), device="cpu").adapter, "no run normalization: not checked"


def test_adapters_are_named_by_the_one_rule(tiny_model, tmp_path):
    from pointsam_engine.sam.adapter import adapter_header, adapter_stem, is_adapter_name

    assert is_adapter_name("a/region.adapter.pt") and is_adapter_name("REGION.Adapter.PT")
    assert not is_adapter_name("region.pt") and not is_adapter_name("region.adapter.pt.bak")
    assert adapter_stem("x/kampala.v2.adapter.pt") == "kampala.v2"
    base = load_model(str(tiny_model), device="cpu")
    add_lora(base.sam, rank=2)
    path = save_adapter(base.sam, tmp_path / "kampala.v2.adapter.pt", base=base, config={}, history=[])
    header = adapter_header(path)
    assert header["name"] == "kampala.v2" and header["base"]["name"] == "tiny-test"
    assert adapter_header(tiny_model) is None, "a model file is not listed as an adapter"


def test_the_api_refuses_an_adapter_trained_under_another_stretch(tiny_model, tmp_path):
    """Each request brings its own stretch, so the server checks the adapter against it, request by request."""
    from pointsam_engine.api.models import ModelPool
    from pointsam_engine.config import SegmentConfig
    from pointsam_engine.errors import OptionError

    path = _adapter_trained_with(tmp_path, tiny_model, sar_db=True)
    pool = ModelPool(SegmentConfig(model=str(tiny_model), device="cpu"))
    with pytest.raises(OptionError, match="trained with --stretch 2,98 --sar-db, but this run uses --stretch 2,98;"):
        pool.get(adapter=str(path), stretch=(2.0, 98.0), sar_db=False)
    assert pool.get(adapter=str(path), stretch=(2.0, 98.0), sar_db=True).adapter


def test_the_servers_own_adapter_is_checked_against_each_requests_stretch(tiny_model, tmp_path):
    from pointsam_engine.api.models import ModelPool
    from pointsam_engine.config import SegmentConfig
    from pointsam_engine.errors import OptionError

    path = _adapter_trained_with(tmp_path, tiny_model, sar_db=True)
    pool = ModelPool(SegmentConfig(model=str(tiny_model), adapter=str(path), device="cpu"))
    with pytest.raises(OptionError, match="pass --stretch 2,98 --sar-db to match it"):
        pool.get(stretch=(2.0, 98.0), sar_db=False)
    assert pool.get(stretch=(2.0, 98.0), sar_db=True) is pool.default
