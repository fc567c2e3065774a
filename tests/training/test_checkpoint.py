"""Checkpoints: resuming gives the uninterrupted run's weights; a file that is not exactly a checkpoint is refused."""

import threading

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pointsam_engine.cli import main
from pointsam_engine.errors import OptionError
from pointsam_engine.sam.adapter import read_adapter
from pointsam_engine.sam.lora import add_lora, lora_state_dict
from pointsam_engine.sam.model import load_model
from training import loop
from training.checkpoint import LoopState, restore_checkpoint, save_checkpoint
from training.loop import train
from training.prototypes import PrototypeRegularizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def uninterrupted(train_config, tmp_path_factory):
    """The LoRA weights of the 6-step run without a break."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    output = tmp_path_factory.mktemp("whole") / "whole.adapter.pt"
    train(train_config(output), echo=lambda _: None)
    torch.set_num_threads(threads)
    return read_adapter(output)["state_dict"]


def _assert_same_weights(expected, output):
    got = read_adapter(output)["state_dict"]
    assert expected.keys() == got.keys() and any(v.abs().sum() > 0 for k, v in expected.items() if "_b." in k)
    assert all(torch.allclose(expected[k], got[k], atol=1e-6) for k in expected)


def test_resume_after_ctrl_c_equals_the_uninterrupted_run(train_config, uninterrupted, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_step = loop.selftrain_step

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # inside step 5: the checkpoint keeps step 4 and the random state step 5 starts from
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "selftrain_step", interrupted)
    broken = tmp_path / "broken.adapter.pt"
    with pytest.raises(KeyboardInterrupt):
        train(train_config(broken), echo=lambda _: None)
    assert not broken.exists() and (tmp_path / "broken.ckpt").is_file()
    monkeypatch.setattr(loop, "selftrain_step", real_step)
    train(train_config(broken, resume=True), echo=lambda _: None)
    _assert_same_weights(uninterrupted, broken)


def test_resume_after_a_cancel_between_checkpoints_equals_the_uninterrupted_run(train_config, uninterrupted, tmp_path):
    from pointsam_engine.errors import Cancelled

    cancel = threading.Event()

    def progress(_fraction, stage):
        if stage == "step 4/6":  # checkpoints fall at steps 3 and 6: the cancel writes one at step 4
            cancel.set()

    output = tmp_path / "cancelled.adapter.pt"
    with pytest.raises(Cancelled, match="at step 4"):
        train(train_config(output), echo=lambda _: None, progress=progress, cancel=cancel)
    train(train_config(output, resume=True), echo=lambda _: None)
    _assert_same_weights(uninterrupted, output)


def _training_parts(model_path, train_decoder=False):
    sam = load_model(str(model_path), device="cpu").sam
    add_lora(sam, rank=2)
    if train_decoder:
        sam.mask_decoder.requires_grad_(True)
    optimizer = torch.optim.Adam([p for p in sam.parameters() if p.requires_grad], lr=1e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return sam, optimizer, schedule


def _saved(path, model_path, train_decoder=False, regularizer=None):
    sam, optimizer, schedule = _training_parts(model_path, train_decoder)
    with torch.no_grad():
        for name, p in sam.named_parameters():
            if ".lora_" in name:
                p.add_(0.5)
    rng = np.random.default_rng(11)
    rng.integers(100, size=3)
    state = LoopState(rng=rng.bit_generator.state, step=7, history=[{"step": 0, "miou": 0.5}],
                      best={"step": 0, "score": 0.5, "miou": 0.5}, base_areas={"0:a": 12.5})
    save_checkpoint(path, state, sam, optimizer, schedule, regularizer, train_decoder)
    return sam, state, rng


def test_a_checkpoint_restores_weights_loop_state_random_state_and_regularizer(tiny_model, tmp_path):
    path = tmp_path / "run.ckpt"
    regularizer = PrototypeRegularizer(torch.randn(3, 8), capacity=4, interval=2)
    regularizer.update(1, torch.randn(4, 8))
    saved, state, rng = _saved(path, tiny_model, regularizer=regularizer)
    sam, optimizer, schedule = _training_parts(tiny_model)
    restored, restored_regularizer = restore_checkpoint(path, sam, optimizer, schedule, train_decoder=False)
    assert restored == state
    again = np.random.default_rng(0)
    again.bit_generator.state = restored.rng
    assert again.integers(1000, size=5).tolist() == rng.integers(1000, size=5).tolist()
    expected, got = lora_state_dict(saved), lora_state_dict(sam)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert torch.equal(restored_regularizer.predicted, regularizer.predicted)


def test_a_checkpoint_with_an_unknown_key_is_refused_in_one_line(scene, tiny_model, tmp_path):
    output = tmp_path / "region.adapter.pt"
    path = tmp_path / "region.ckpt"
    _saved(path, tiny_model)
    payload = torch.load(path, weights_only=True)
    payload["state"]["learning_rate_of_another_version"] = 0.1
    torch.save(payload, path)
    sam, optimizer, schedule = _training_parts(tiny_model)
    with pytest.raises(OptionError, match=r"region\.ckpt .*unknown keys in state: learning_rate_of_another_version"):
        restore_checkpoint(path, sam, optimizer, schedule, train_decoder=False)
    result = CliRunner().invoke(main, ["train", "--raster", str(scene["raster"]), "--points", str(scene["points"]),
                                       "-o", str(output), "--model", str(tiny_model), "--rank", "2", "--resume"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert str(path) in result.output and "without --resume" in result.output
    assert not output.exists()


def test_a_checkpoint_of_a_run_with_another_train_decoder_is_refused(tiny_model, tmp_path):
    path = tmp_path / "run.ckpt"
    _saved(path, tiny_model, train_decoder=True)
    sam, optimizer, schedule = _training_parts(tiny_model)
    with pytest.raises(OptionError, match="unknown keys in trained: decoder"):
        restore_checkpoint(path, sam, optimizer, schedule, train_decoder=False)


ran = []


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return ran.append, ("unpickled",)


def test_a_checkpoint_holding_a_pickled_object_is_refused_without_running_it(tiny_model, tmp_path):
    path = tmp_path / "run.ckpt"
    _saved(path, tiny_model)
    payload = torch.load(path, weights_only=True)
    payload["state"]["history"].append(_RunsCodeWhenUnpickled())
    torch.save(payload, path)
    sam, optimizer, schedule = _training_parts(tiny_model)
    with pytest.raises(OptionError, match=r"run\.ckpt is not a pointsam train checkpoint"):
        restore_checkpoint(path, sam, optimizer, schedule, train_decoder=False)
    assert ran == []
