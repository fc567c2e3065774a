import copy

import pytest
import torch
from torch import nn

from pointsam_engine.errors import ModelError
from pointsam_engine.sam.encoder import use_fused_attention
from pointsam_engine.sam.lora import LoRAQKV, add_lora, base_model, load_lora_state_dict, lora_config, lora_state_dict, merge_lora
from pointsam_engine.sam.model import SamArch, build_sam
from tests.conftest import TINY_ARCH

ARCH = SamArch(**{**TINY_ARCH, "encoder_depth": 3, "encoder_global_attn_indexes": (2,), "image_size": 128})


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def base():
    torch.manual_seed(0)
    return build_sam(ARCH).eval()


@pytest.fixture
def image():
    return torch.randn(1, 3, ARCH.image_size, ARCH.image_size, generator=torch.Generator().manual_seed(1))


def _step(sam, image, lr=1e-2):
    params = [p for p in sam.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    sam.image_encoder(image).square().mean().backward()
    optimizer.step()


def test_default_adapts_all_blocks_but_the_first_and_starts_equal_to_the_base(base, image):
    sam = copy.deepcopy(base)
    names = add_lora(sam)
    assert names == ["image_encoder.blocks.1.attn.qkv", "image_encoder.blocks.2.attn.qkv"]
    assert type(sam.image_encoder.blocks[0].attn.qkv) is nn.Linear
    assert all(isinstance(sam.get_submodule(n), LoRAQKV) for n in names)
    with torch.no_grad():
        assert torch.equal(sam.image_encoder(image), base.image_encoder(image))


def test_only_lora_parameters_train_and_one_step_changes_the_output(base, image):
    sam = copy.deepcopy(base)
    add_lora(sam, rank=2)
    trainable = {n for n, p in sam.named_parameters() if p.requires_grad}
    assert trainable == set(lora_state_dict(sam))
    dim = ARCH.encoder_embed_dim
    assert sum(p.numel() for n, p in sam.named_parameters() if p.requires_grad) == 2 * 4 * 2 * dim
    _step(sam, image)
    for name, p in sam.named_parameters():
        assert (p.grad is not None) == (".lora_" in name), name
    assert all(sam.get_submodule(f"image_encoder.blocks.{i}.attn.qkv").lora_q_b.weight.grad.abs().sum() > 0
               for i in (1, 2))
    with torch.no_grad():
        assert not torch.allclose(sam.image_encoder(image), base.image_encoder(image))
        blocks0 = sam.image_encoder.blocks[0].state_dict()
        assert all(torch.equal(v, base.image_encoder.blocks[0].state_dict()[k]) for k, v in blocks0.items())


def test_base_model_switches_a_trained_adapter_off_and_back_on(base, image):
    sam = copy.deepcopy(base)
    add_lora(sam, rank=2)
    _step(sam, image)
    with torch.no_grad():
        adapted = sam.image_encoder(image)
        with base_model(sam) as plain:
            assert torch.equal(plain.image_encoder(image), base.image_encoder(image))
        assert torch.equal(sam.image_encoder(image), adapted)
        assert not torch.allclose(adapted, base.image_encoder(image))
        with pytest.raises(RuntimeError), base_model(sam):
            raise RuntimeError("an error inside the block")
        assert torch.equal(sam.image_encoder(image), adapted)


def test_k_slice_is_never_adapted(base):
    layer = LoRAQKV(copy.deepcopy(base.image_encoder.blocks[1].attn.qkv), rank=3, alpha=6.0)
    for p in layer.parameters():
        p.data.normal_()
    x = torch.randn(5, ARCH.encoder_embed_dim)
    dim = ARCH.encoder_embed_dim
    plain = nn.functional.linear(x, layer.weight, layer.bias)
    out = layer(x)
    assert torch.equal(out[:, dim:2 * dim], plain[:, dim:2 * dim])
    expected_q = plain[:, :dim] + 2.0 * x @ layer.lora_q_a.weight.T @ layer.lora_q_b.weight.T
    torch.testing.assert_close(out[:, :dim], expected_q)


def test_fused_attention_and_chosen_blocks(base, image):
    sam = use_fused_attention(copy.deepcopy(base))
    assert add_lora(sam, blocks=[2]) == ["image_encoder.blocks.2.attn.qkv"]
    assert lora_config(sam) == {"rank": 4, "alpha": 4, "blocks": [2]}
    _step(sam, image)  # FusedAttention calls self.qkv too
    assert sam.image_encoder.blocks[2].attn.qkv.lora_v_b.weight.grad.abs().sum() > 0


def test_stock_state_dict_loads_into_an_adapted_model(base):
    sam = build_sam(ARCH)
    add_lora(sam)
    result = sam.load_state_dict(base.state_dict(), strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) == set(lora_state_dict(sam))
    assert torch.equal(sam.image_encoder.blocks[1].attn.qkv.weight, base.image_encoder.blocks[1].attn.qkv.weight)


def test_merge_gives_the_same_output_and_the_stock_keys(base, image):
    sam = copy.deepcopy(base)
    add_lora(sam)
    _step(sam, image, lr=0.05)
    _step(sam, image, lr=0.05)  # A has a gradient only once B is non-zero
    with torch.no_grad():
        adapted = sam.image_encoder(image)
        merge_lora(sam)
        merged = sam.image_encoder(image)
    assert not any(isinstance(m, LoRAQKV) for m in sam.modules())
    state = sam.state_dict()
    assert list(state) == list(base.state_dict())
    assert all(state[k].shape == v.shape for k, v in base.state_dict().items())
    torch.testing.assert_close(merged, adapted, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(merged, base.image_encoder(image))


def test_adapter_save_and_load_round_trip(base, image, tmp_path):
    trained = copy.deepcopy(base)
    add_lora(trained)
    _step(trained, image)
    torch.save(lora_state_dict(trained), tmp_path / "adapter.pt")
    fresh = copy.deepcopy(base)
    add_lora(fresh)
    load_lora_state_dict(fresh, torch.load(tmp_path / "adapter.pt", weights_only=True))
    with torch.no_grad():
        assert torch.equal(fresh.image_encoder(image), trained.image_encoder(image))
    assert list(lora_state_dict(fresh)) == list(lora_state_dict(trained))


def test_loading_a_mismatched_adapter_raises_one_line(base):
    trained = copy.deepcopy(base)
    add_lora(trained, rank=4)
    other_rank = copy.deepcopy(base)
    add_lora(other_rank, rank=2)
    with pytest.raises(ModelError, match="rank") as info:
        load_lora_state_dict(other_rank, lora_state_dict(trained))
    assert "\n" not in str(info.value)
    other_blocks = copy.deepcopy(base)
    add_lora(other_blocks, blocks=[2])
    with pytest.raises(ModelError, match="unexpected keys") as info:
        load_lora_state_dict(other_blocks, lora_state_dict(trained))
    assert "\n" not in str(info.value)
    with pytest.raises(ModelError, match="no LoRA"):
        load_lora_state_dict(copy.deepcopy(base), lora_state_dict(trained))


def test_bad_options(base):
    with pytest.raises(ValueError, match="outside"):
        add_lora(copy.deepcopy(base), blocks=[3])
    with pytest.raises(ValueError, match="outside"):
        add_lora(copy.deepcopy(base), blocks=[])
    with pytest.raises(ValueError, match="rank"):
        add_lora(copy.deepcopy(base), rank=0)
    sam = copy.deepcopy(base)
    add_lora(sam)
    with pytest.raises(ValueError, match="already"):
        add_lora(sam)
