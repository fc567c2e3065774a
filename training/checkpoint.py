"""Checkpoints: everything a run needs to continue where it stopped, in one file beside the adapter.

A checkpoint is a dict of plain Python values and tensors, so ``torch.load(weights_only=True)`` reads it
without unpickling any object:

- ``state``: the fields of :class:`LoopState` (step, random state, validation history, best weights so far);
- ``trained``: the weights being trained (:func:`trained_weights`);
- ``optimizer``, ``schedule``: their ``state_dict()``;
- ``regularizer``: :meth:`PrototypeRegularizer.state_dict`, or None without prototypes.

Restoring is strict: a file torch cannot read as plain data, or whose keys are not these, or whose
weights do not fit this run's options, is refused with one line naming the file and the fix.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from pointsam_engine.errors import ModelError, OptionError
from pointsam_engine.output import atomic_path
from pointsam_engine.sam.lora import load_lora_state_dict, lora_state_dict

from .prototypes import PrototypeRegularizer

CHECKPOINT_KEYS = frozenset({"state", "trained", "optimizer", "schedule", "regularizer"})


@dataclass
class LoopState:
    """What the training loop carries from step to step; a checkpoint restores all of it."""

    rng: dict  # numpy's bit generator state at the start of the step being run: a checkpoint taken inside it redoes it
    step: int = 0  # steps done
    history: List[dict] = field(default_factory=list)  # one entry of figures per validation
    best: Optional[dict] = None  # the best validation's figures, with its "step" and "score"
    best_lora: Optional[dict] = None  # the weights of that step (:func:`trained_weights`)
    base_areas: Dict[str, float] = field(default_factory=dict)  # held-out object areas of the base model (step 0)


STATE_KEYS = tuple(f.name for f in fields(LoopState))


def trained_weights(sam: torch.nn.Module, train_decoder: bool) -> dict:
    """Copies of the weights training changes: ``{"lora"}``, and ``"decoder"`` with ``train_decoder``."""
    weights = {"lora": lora_state_dict(sam)}
    if train_decoder:
        weights["decoder"] = copy.deepcopy(sam.mask_decoder.state_dict())
    return weights


def load_trained_weights(sam: torch.nn.Module, weights: dict) -> None:
    """Put :func:`trained_weights` back into ``sam``."""
    load_lora_state_dict(sam, weights["lora"])
    if "decoder" in weights:
        sam.mask_decoder.load_state_dict(weights["decoder"])


def save_checkpoint(path: Path, state: LoopState, sam: torch.nn.Module, optimizer, schedule,
                    regularizer: Optional[PrototypeRegularizer], train_decoder: bool) -> None:
    """Write the checkpoint atomically: a Ctrl-C while writing leaves the previous one whole."""
    payload = {"state": {name: getattr(state, name) for name in STATE_KEYS},
               "trained": trained_weights(sam, train_decoder),
               "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
               "regularizer": None if regularizer is None else regularizer.state_dict()}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def restore_checkpoint(path: Path, sam: torch.nn.Module, optimizer, schedule,
                       train_decoder: bool) -> Tuple[LoopState, Optional[PrototypeRegularizer]]:
    """Load the checkpoint into ``sam``, ``optimizer`` and ``schedule``; the loop state and the regularizer.

    Raises:
        OptionError: the file is not a checkpoint of a run with these options.
    """
    payload = read_checkpoint(path, train_decoder)
    try:
        load_trained_weights(sam, payload["trained"])
        optimizer.load_state_dict(payload["optimizer"])
        schedule.load_state_dict(payload["schedule"])
        state = LoopState(**payload["state"])
        regularizer = payload["regularizer"]
        return state, None if regularizer is None else PrototypeRegularizer.from_state_dict(regularizer)
    except (ModelError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise OptionError(f"--resume: checkpoint {path} does not fit this run ({first}); resume with the options "
                          "it was started with (--rank, --blocks, --train-decoder), or run without --resume") from None


def read_checkpoint(path: Path, train_decoder: bool) -> dict:
    """The checkpoint's contents, checked to hold exactly the keys this run writes; plain data only."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for any object beyond plain data and tensors; zip or EOF errors
        first = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise OptionError(f"--resume: {path} is not a pointsam train checkpoint ({first}); "
                          "run without --resume to start over") from None
    trained_keys = frozenset({"lora", "decoder"} if train_decoder else {"lora"})
    problem = (_key_problem(payload, CHECKPOINT_KEYS)
               or _key_problem(payload["state"], frozenset(STATE_KEYS), "state")
               or _key_problem(payload["trained"], trained_keys, "trained"))
    if problem:
        raise OptionError(f"--resume: {path} is not a checkpoint of this pointsam train ({problem}); "
                          "run without --resume to start over")
    return payload


def _key_problem(value, expected: frozenset, where: str = "") -> str:
    """Why ``value`` is not a dict with exactly the keys ``expected``; empty when it is."""
    inside = f" in {where}" if where else ""
    if not isinstance(value, dict):
        return f"{type(value).__name__}{inside} where a dict was expected"
    unknown, missing = sorted(map(str, set(value) - expected)), sorted(expected - set(value))
    if unknown:
        return f"unknown keys{inside}: {', '.join(unknown)}"
    if missing:
        return f"missing keys{inside}: {', '.join(missing)}"
    return ""
