"""``pointsam train`` on SAM 2.1: LoRA on the hiera attention's q and v projections starts equal to the base and
merges back; a few self-training steps write an adapter that names its SAM 2.1 base, is refused on any other
base, and ``export`` folds into a model file the engine loads. The model is hiera_t at a 256² input (random
weights, the engine's own SAM 2.1 format), so each step is cheap."""

import dataclasses

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pointsam_engine.cli import main
from pointsam_engine.errors import ModelError
from pointsam_engine.sam.model import load_model
from pointsam_engine.sam.sam2_backend import SAM2_ARCHS

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SKIP = 'SAM 2.1 needs the optional sam2 package: pip install -e ".[sam2]"'


def write_sam2(path, seed: int):
    from pointsam_engine.sam.sam2_backend import build_sam2_model, save_sam2_checkpoint

    torch.manual_seed(seed)
    arch = dataclasses.replace(SAM2_ARCHS["hiera_t"], image_size=256)
    save_sam2_checkpoint(build_sam2_model(arch), arch, path, name=path.stem)
    return path


@pytest.fixture(scope="module")
def sam2_models(tmp_path_factory):
    pytest.importorskip("sam2", reason=SKIP)
    folder = tmp_path_factory.mktemp("sam2")
    return write_sam2(folder / "hiera-a.pt", 11), write_sam2(folder / "hiera-b.pt", 12)


@pytest.fixture(scope="module")
def trained(sam2_models, train_config, tmp_path_factory):
    """A three-step self-training run on SAM 2.1 model a, with prototypes, calibration and the anchor on."""
    from training.loop import train

    output = tmp_path_factory.mktemp("run") / "hiera.adapter.pt"
    train(train_config(output, model=str(sam2_models[0]), steps=3, checkpoint_every=3), echo=lambda _: None)
    return output


def test_lora_on_hiera_starts_equal_to_the_base_and_merges_back(sam2_models):
    from pointsam_engine.sam.decode import embed
    from pointsam_engine.sam.lora import add_lora, base_model, lora_config, lora_state_dict, merge_lora

    model = load_model(str(sam2_models[0]), device="cpu")
    image = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    stock_keys = set(model.sam.state_dict())
    with torch.no_grad():
        base = embed(model.sam, image)
        names = add_lora(model.sam, rank=4)
        depth = len(model.sam.image_encoder.trunk.blocks)
        assert names == [f"image_encoder.trunk.blocks.{i}.attn.qkv" for i in range(1, depth)]
        assert lora_config(model.sam) == {"rank": 4, "alpha": 4, "blocks": list(range(1, depth))}
        for a, b in zip(base, embed(model.sam, image)):  # B is zero: step 0 is the base model
            assert torch.equal(a, b)
        trainable = {n for n, p in model.sam.named_parameters() if p.requires_grad}
        assert trainable == set(lora_state_dict(model.sam)) and all(".attn.qkv.lora_" in n for n in trainable)
        for name, p in model.sam.named_parameters():
            if name.endswith("_b.weight"):
                p.normal_(0, 0.02)
        adapted = embed(model.sam, image)
        assert not torch.allclose(adapted.image_embed, base.image_embed)
        with base_model(model.sam):
            assert torch.equal(embed(model.sam, image).image_embed, base.image_embed)
        merge_lora(model.sam)
        assert set(model.sam.state_dict()) == stock_keys
        for a, b in zip(adapted, embed(model.sam, image)):
            assert torch.allclose(a, b, atol=1e-4)


def test_a_few_steps_write_an_adapter_for_the_sam2_base_only(trained, sam2_models, tiny_model):
    from pointsam_engine.sam.adapter import apply_adapter, read_adapter

    adapter = read_adapter(trained)
    base = load_model(str(sam2_models[0]), device="cpu")
    assert adapter["base"] == {"name": "hiera-a", "sha256": base.sha256, "model_type": "hiera_t"}
    assert adapter["config"]["kept_step"] == 3
    assert any(v.abs().sum() > 0 for k, v in adapter["state_dict"].items() if "_b." in k)  # the adapter learnt
    assert all(k.startswith("image_encoder.trunk.blocks.") for k in adapter["state_dict"])
    applied = apply_adapter(base, trained)
    assert applied.label.startswith(f"hiera-a@{base.sha256[:12]}+hiera@")
    for other in (sam2_models[1], tiny_model):  # another SAM 2.1 of the same size, and a SAM
        with pytest.raises(ModelError, match="was trained on hiera-a@"):
            apply_adapter(load_model(str(other), device="cpu"), trained)


def test_export_merges_the_adapter_into_a_sam2_model_file(trained, sam2_models, tmp_path):
    from pointsam_engine.sam.adapter import load_adapted_model
    from pointsam_engine.sam.decode import embed

    merged = tmp_path / "merged.pt"
    result = CliRunner().invoke(main, ["export", "--model", str(sam2_models[0]), "--adapter", str(trained),
                                       "-o", str(merged)])
    assert result.exit_code == 0, result.output
    model = load_model(str(merged), device="cpu")
    assert (model.model_type, model.image_size) == ("hiera_t", 256) and model.provenance["merged_from"].count("+") == 1
    image = np.random.default_rng(1).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    adapted = load_adapted_model(str(sam2_models[0]), str(trained), device="cpu")
    with torch.no_grad():
        for a, b in zip(embed(adapted.sam, image), embed(model.sam, image)):
            assert torch.allclose(a, b, atol=1e-4)
