"""``pointsam pretrain``: reproducible from its seed, saved in the engine's own format, resumable by --init."""

import pytest
from click.testing import CliRunner

from pointsam_engine.cli import main
from pointsam_engine.sam.model import load_model
from training.pretrain import PretrainConfig, pretrain


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pretrain")

    def run(name, **changes):
        cfg = PretrainConfig(output=str(folder / name), steps=2, images_per_step=1, objects_per_image=3,
                             scenes_per_kind=1, scene_size=288, warmup=1, log_every=1, **changes)
        pretrain(cfg, echo=lambda _: None)
        return load_model(cfg.output, device="cpu")

    a = run("a.pt", seed=5)
    return {"a": a, "a_again": run("b.pt", seed=5), "other_seed": run("c.pt", seed=6),
            "from_a": run("d.pt", seed=6, lr=0.0, init=str(folder / "a.pt"))}


def _max_difference(x, y) -> float:
    sx, sy = x.sam.state_dict(), y.sam.state_dict()
    return max(float((v - sy[k]).abs().max()) for k, v in sx.items() if v.is_floating_point())


def test_same_seed_same_weights_other_seed_other_weights(runs):
    # Equal up to float summation order across threads (Adam turns the ~0 gradients of attention key biases into
    # steps of noise), far below what another seed gives.
    assert _max_difference(runs["a"], runs["a_again"]) < 1e-4
    assert _max_difference(runs["a"], runs["other_seed"]) > 1e-2


def test_saved_in_the_engine_format_with_provenance(runs):
    a = runs["a"]
    assert a.name == "pointsam-tiny" and a.provenance["config"]["seed"] == 5 and a.arch.image_size == 256
    assert [e["step"] for e in a.provenance["log"]] == [1, 2]


def test_init_continues_from_a_model_instead_of_random_weights(runs):
    assert _max_difference(runs["a"], runs["from_a"]) == 0.0  # lr 0: the loaded weights come out unchanged
    assert runs["from_a"].provenance["config"]["init"].endswith("a.pt")


def test_pretrain_is_a_pointsam_command():
    result = CliRunner().invoke(main, ["pretrain", "--help"])
    assert result.exit_code == 0 and "--init" in result.output and "--seed" in result.output
