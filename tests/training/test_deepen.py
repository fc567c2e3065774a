"""Deepening the encoder (``pointsam pretrain --init M --encoder-depth N``): the deeper model starts out computing
what the model it grew from computes, keeps the global blocks spread through its depth, records the growth,
and a depth it cannot reach is refused in one line before any work."""

import dataclasses

import pytest
import torch
from click.testing import CliRunner

from pointsam_engine.cli import main
from pointsam_engine.sam.model import OFFICIAL_ARCHS, build_sam, load_model, save_pointsam_checkpoint
from training.deepen import copies_per_block, deepen, deepened_arch
from training.model_card import _stage_line
from training.pretrain import POINTSAM_TINY, PretrainConfig, pretrain


@pytest.fixture(scope="module")
def shallow():
    torch.manual_seed(3)
    sam = build_sam(POINTSAM_TINY).eval()
    for block in sam.image_encoder.blocks:  # trained-looking output projections: zero ones would hide a mix-up
        for layer in (block.attn.proj, block.mlp.lin2):
            torch.nn.init.normal_(layer.weight, std=0.05)
            torch.nn.init.normal_(layer.bias, std=0.05)
    return sam


def _masks(sam, image):
    with torch.no_grad():
        embedding = sam.image_encoder(image)
        sparse, dense = sam.prompt_encoder(points=(torch.tensor([[[100.0, 120.0]]]), torch.tensor([[1]])),
                                           boxes=None, masks=None)
        low, iou = sam.mask_decoder(embedding, sam.prompt_encoder.get_dense_pe(), sparse, dense, False)
    return embedding, low, iou


def test_the_deepened_model_computes_what_the_shallow_one_did(shallow):
    deep, arch = deepen(shallow, POINTSAM_TINY, 12)
    image = torch.randn(1, 3, 256, 256)
    for before, after in zip(_masks(shallow, image), _masks(deep.eval(), image)):
        assert torch.allclose(before, after, atol=1e-5), float((before - after).abs().max())
    assert len(deep.image_encoder.blocks) == 12 and arch.encoder_depth == 12
    grown = sum(p.numel() for p in deep.parameters()) - sum(p.numel() for p in shallow.parameters())
    assert grown == sum(p.numel() for p in shallow.image_encoder.blocks.parameters())


def test_each_copy_follows_its_block_with_its_attention_kind():
    assert POINTSAM_TINY.encoder_global_attn_indexes == (2, 5)
    assert deepened_arch(POINTSAM_TINY, 12).encoder_global_attn_indexes == (4, 5, 10, 11)
    assert deepened_arch(POINTSAM_TINY, 18).encoder_global_attn_indexes == (6, 7, 8, 15, 16, 17)
    twelve = deepened_arch(POINTSAM_TINY, 12)
    assert deepened_arch(twelve, 18).encoder_global_attn_indexes == (6, 7, 8, 15, 16, 17)  # 4 -> 6, 5 -> 7 and 8
    assert copies_per_block(12, 18) == (1, 2) * 6 and copies_per_block(6, 8) == (1, 1, 2, 1, 1, 2)
    for depth in (6, 3):
        with pytest.raises(ValueError, match="has 6 blocks and can only grow"):
            deepened_arch(POINTSAM_TINY, depth)


def test_a_depth_that_is_not_a_multiple_spreads_the_copies_and_keeps_the_function(shallow):
    deep, arch = deepen(shallow, POINTSAM_TINY, 8)
    image = torch.randn(1, 3, 256, 256)
    for before, after in zip(_masks(shallow, image), _masks(deep.eval(), image)):
        assert torch.allclose(before, after, atol=1e-5), float((before - after).abs().max())
    assert arch.encoder_global_attn_indexes == (2, 3, 6, 7)
    source = [0, 1, 2, 2, 3, 4, 5, 5]  # which shallow block each deep block copies
    for deep_block, i in zip(deep.image_encoder.blocks, source):
        assert torch.equal(deep_block.attn.qkv.weight, shallow.image_encoder.blocks[i].attn.qkv.weight)
    provenance = {"deepened": {"from": 6, "to": 8}, "config": dataclasses.asdict(PretrainConfig()), "wall_minutes": 1}
    assert _stage_line(provenance).startswith(
        "encoder deepened from 6 to 8 blocks (2 of its 6 blocks each followed by a copy of itself that starts")


@pytest.mark.parametrize("to, says", [(7, "1 of its 6 blocks followed by a copy of itself that starts"),
                                      (12, "each block followed by a copy of itself that starts"),
                                      (15, "each block followed by 1 or 2 copies of itself that start"),
                                      (18, "each block followed by 2 copies of itself that start")])
def test_the_card_says_how_many_copies_each_block_got(to, says):
    provenance = {"deepened": {"from": 6, "to": to}, "config": dataclasses.asdict(PretrainConfig()), "wall_minutes": 1}
    assert _stage_line(provenance).startswith(f"encoder deepened from 6 to {to} blocks ({says} as the identity")


def test_pretrain_deepens_its_init_and_records_it(tmp_path, shallow):
    init = tmp_path / "init.pt"
    save_pointsam_checkpoint(shallow, POINTSAM_TINY, init, name="pointsam-tiny", provenance={"config": {}})
    cfg = PretrainConfig(output=str(tmp_path / "deep.pt"), steps=1, images_per_step=1, objects_per_image=2,
                         scenes_per_kind=1, scene_size=288, warmup=1, lr=0.0, init=str(init), encoder_depth=12)
    provenance = pretrain(cfg, echo=lambda _: None)
    deep = load_model(cfg.output, device="cpu")
    assert deep.arch.encoder_depth == 12 and provenance["deepened"] == {"from": 6, "to": 12}
    image = torch.randn(1, 3, 256, 256)
    assert torch.allclose(_masks(shallow, image)[1], _masks(deep.sam, image)[1], atol=1e-5)  # lr 0: unchanged
    assert _stage_line(provenance).startswith("encoder deepened from 6 to 12 blocks")


TOO_SHALLOW = "--encoder-depth 4: the model's encoder has 6 blocks and can only grow; choose more than 6, or 0 to keep its depth"


@pytest.mark.parametrize("depth, extra, named", [("8", [], "--encoder-depth deepens the model given with --init"),
                                                 ("6", [], "--encoder-depth deepens the model given with --init"),
                                                 ("4", ["--init", "INIT"], TOO_SHALLOW),
                                                 ("12", ["--init", "OFFICIAL"], "pass an official checkpoint or a PointSAM")])
def test_a_depth_it_cannot_reach_is_refused_in_one_line(tmp_path, shallow, depth, extra, named):
    init, official = tmp_path / "init.pt", tmp_path / "sam_vit_b.pth"
    save_pointsam_checkpoint(shallow, POINTSAM_TINY, init, name="pointsam-tiny", provenance={"config": {}})
    torch.save(shallow.state_dict(), official)  # a bare state dict of no official size: the engine refuses it
    out = tmp_path / "deep.pt"
    paths = {"INIT": str(init), "OFFICIAL": str(official)}
    args = ["pretrain", "--encoder-depth", depth, "--no-card", "-o", str(out), *[paths.get(a, a) for a in extra]]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], result.output
    assert not out.exists()


def test_an_official_checkpoint_is_not_continued(tmp_path):
    """pointsam pretrain continues its own models; an official SAM loads in the engine but is refused here."""
    official, out = tmp_path / "sam_vit_b_01ec64.pth", tmp_path / "deep.pt"
    torch.save(build_sam(OFFICIAL_ARCHS["vit_b"]).state_dict(), official)
    result = CliRunner().invoke(main, ["pretrain", "--init", str(official), "--encoder-depth", "24", "--no-card",
                                       "-o", str(out)])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "is not a PointSAM model file" in result.output and not out.exists()
