"""``pointsam average``: one model from the weights of two of the same architecture (a "model soup").

Two stages of one training run that drew their weights apart (a long real-imagery stage, a short ship-heavy
one) can each be better at something; their weighted mean often keeps most of both, as Wortsman et al. found
for fine-tuned models sharing a start ("Model soups", ICML 2022). The result records both parents, so the
model card lists the averaging as a stage of its recipe.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pointsam_engine.errors import ModelError
from pointsam_engine.output import atomic_path, check_distinct, check_file_target
from pointsam_engine.sam.model import file_sha256, load_model, save_pointsam_checkpoint

from .pretrain import machine


def average_models(first: str, second: str, weight: float, output: str, overwrite: bool = False) -> dict:
    """Write ``weight`` x ``first`` + (1 - ``weight``) x ``second`` to ``output``; returns its provenance.

    Both must be PointSAM model files of one architecture (SAM checkpoints from elsewhere record no recipe).
    The provenance continues ``first``'s and names ``second`` with its sha256 and share.
    """
    if not 0.0 < weight < 1.0:
        raise ValueError(f"weight {weight} is not between 0 and 1 (exclusive)")
    check_distinct({"-o": output}, {"FIRST": first, "SECOND": second})
    check_file_target(output, overwrite, "-o")
    a, b = (load_model(path, device="cpu") for path in (first, second))
    for path, model in ((first, a), (second, b)):
        if "config" not in model.provenance:
            raise ModelError(f"{path} records no training recipe (not written by pointsam pretrain); "
                             "average two models trained by pointsam pretrain")
    if a.arch != b.arch:
        raise ModelError(f"{first} and {second} have different architectures; average two stages of one model")
    mixed = {k: torch.lerp(w.float(), a.sam.state_dict()[k].float(), weight).to(w.dtype) if w.is_floating_point() else w
             for k, w in b.sam.state_dict().items()}
    a.sam.load_state_dict(mixed)
    provenance = {
        "continued_from": {"file": Path(first).name, "sha256": file_sha256(first), "provenance": a.provenance},
        "averaged_with": {"file": Path(second).name, "sha256": file_sha256(second), "share": round(1.0 - weight, 6),
                          "provenance": b.provenance},
        "trained_by": "training/average.py (pointsam average)",
        "config": {"weight": weight},
        "parameters": sum(p.numel() for p in a.sam.parameters()),
        "wall_minutes": 0.0,
        "machine": machine(),
        "data": a.provenance.get("data", ""),
    }
    with atomic_path(output) as tmp:
        save_pointsam_checkpoint(a.sam.eval(), a.arch, tmp, name=a.name, provenance=provenance)
    return provenance
