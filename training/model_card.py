"""Measure a pre-trained model on fresh generated scenes and write its model card beside the weights."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import torch

from pointsam_engine.demo.run import run_scene
from pointsam_engine.output import write_text
from pointsam_engine.sam.model import build_sam, file_sha256, save_pointsam_checkpoint

from .data import DENSE
from .deepen import copies_per_block
from .realdata import BUILDINGS, measure_real

# evaluation sets: (scene kind, density, seeds never used in training)
EVAL_SETS: Dict[str, tuple] = {"buildings": ("buildings", 1.0, (20001, 20002, 20003)),
                               "ships": ("ships", 1.0, (20011, 20012, 20013)),
                               "dense buildings": ("buildings", DENSE, (20021, 20022, 20023))}
EVAL_SIZE = 768


def measure(model_path, calibration: bool = True, sets=EVAL_SETS, size: int = EVAL_SIZE,
            keep_overlaps: bool = False) -> Dict[str, dict]:
    """Per evaluation set: mean mIoU and mF1 over scenes, summed merges and instances (one click per object).

    ``keep_overlaps``: score the model's own masks, before the engine gives shared pixels to the higher
    logit; merges then show what calibration alone prevents."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (kind, density, seeds) in sets.items():
            runs = [run_scene(kind, tmp, seed=s, size=size, model=str(model_path), calibration=calibration,
                              density=density, preview=False, name=f"{kind}_{s}", keep_overlaps=keep_overlaps)["figures"]
                    for s in seeds]
            out[name] = {"miou": float(np.mean([r["miou"] for r in runs])), "mf1": float(np.mean([r["mf1"] for r in runs])),
                         "merges": int(sum(r["merges"] for r in runs)), "instances": int(sum(r["instances"] for r in runs)),
                         "scenes": len(runs)}
    return out


def untrained_copy(model_path, folder) -> Path:
    """The same architecture with random weights (seed 0), to show what the training did."""
    from pointsam_engine.sam.model import load_model

    arch = load_model(str(model_path), device="cpu").arch
    torch.manual_seed(0)
    path = Path(folder) / "untrained.pt"
    save_pointsam_checkpoint(build_sam(arch), arch, path, name="untrained")
    return path


def training_stages(provenance: dict) -> list:
    """Training stages, earliest first (a run started with ``--init`` continues the model it loaded)."""
    stages = [provenance]
    while stages[0].get("continued_from"):
        stages.insert(0, stages[0]["continued_from"]["provenance"])
    return stages


def _eval_seeds() -> str:
    return ", ".join(str(s) for _, _, seeds in EVAL_SETS.values() for s in seeds)


def _stage_line(p: dict) -> str:
    if p.get("averaged_with"):
        other = p["averaged_with"]
        return (f"weights averaged (`pointsam average`): {p['config']['weight']:g} x the stage above + "
                f"{other['share']:g} x `{other['file']}` (sha256 {other['sha256'][:12]}, "
                f"{_stage_name(p, other['sha256'])})")
    c = p["config"]
    share = c.get("kind_share") or "every rendered image alike"
    grown = f"{_deepening(p['deepened'])}, then " if p.get("deepened") else ""
    return (f"{grown}{c['steps']} steps x {c['images_per_step']} chips of 256 px, up to {c['objects_per_image']} objects each, "
            f"AdamW lr {c['lr']}, cosine schedule, warm-up {c['warmup']}, focal alpha {c.get('focal_alpha', 0.25)}, "
            f"kinds: {share}{_dense(c)}, seed {c['seed']}, {p['wall_minutes']} min")


def _deepening(deepened: dict) -> str:
    copies = sorted({n - 1 for n in copies_per_block(deepened["from"], deepened["to"])})
    if copies == [0, 1]:
        grown = deepened["to"] - deepened["from"]
        copy = (f"{grown} of its {deepened['from']} blocks {'each ' if grown > 1 else ''}followed by a copy of "
                "itself that starts")
    elif len(copies) == 1:
        copy = "each block followed by " + ("a copy of itself that starts" if copies == [1] else
                                            f"{copies[0]} copies of itself that start")
    else:
        copy = f"each block followed by {copies[0]} or {copies[1]} copies of itself that start"
    return (f"encoder deepened from {deepened['from']} to {deepened['to']} blocks ({copy} as "
            "the identity, `--encoder-depth`)")


def _stage_name(p: dict, sha256: str) -> str:
    """Which earlier stage of ``p``'s own line a file is, by its sha256 ("another model" if none)."""
    earlier = [stage.get("continued_from") for stage in training_stages(p)]
    for n, link in enumerate(earlier, 1):
        if link and link["sha256"] == sha256:
            return f"the model after stage {n - 1}"
    return "another model"


def _dense(c: dict) -> str:
    share = c.get("dense_share", 0.0)
    dense = f", {share:.0%} of buildings scenes dense with terraces" if share else ""
    real = c.get("real_share", 0.0)
    return dense + (f", {real:.0%} of chips from real labelled buildings" if real else "")


def real_quality_lines(model_path) -> list:
    """The card's real-imagery table (mIoU and mF1 against OpenStreetMap footprints, one click per footprint);
    empty where ../shared/data is absent."""
    if not (BUILDINGS / "hotosm_oam_kampala").is_dir():
        return []
    with tempfile.TemporaryDirectory() as tmp:
        real = measure_real(model_path, Path(tmp))
    lines = ["## Quality on real imagery, one click per OpenStreetMap footprint", "",
             "| imagery | chips | buildings | mIoU | mF1 |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {m['images']} | {m['instances']} | {m['miou']:.3f} | {m['mf1']:.3f} |" for name, m in real.items()]
    return lines + ["", "Kampala (OpenAerialMap drone imagery at 0.30, 0.15 and 0.075 m, CC BY 4.0; footprints ODbL) is "
                    "never trained on; Banepa's held-out chips are its easternmost tile column "
                    "(`training/realdata.py`). mIoU and mF1 are means over chips, each chip segmented alone by the "
                    "engine with its defaults (`training.realdata.measure_real`).", ""]


def _real(stages: list) -> bool:
    return any(p["config"].get("real_share") for p in stages)


def write_model_card(model_path, provenance: dict, echo: Callable[[str], None] = print) -> Path:
    model_path = Path(model_path)
    echo("measuring quality on fresh scenes (seeds never used in training) ...")
    trained = measure(model_path)
    plain = measure(model_path, calibration=False)
    masks = measure(model_path, keep_overlaps=True)
    plain_masks = measure(model_path, calibration=False, keep_overlaps=True)
    with tempfile.TemporaryDirectory() as tmp:
        untrained = measure(untrained_copy(model_path, tmp))
    stages = training_stages(provenance)
    cfg = [p for p in stages if not p.get("averaged_with")][-1]["config"]  # the last stage that trained
    lines = [
        "# pointsam-tiny",
        "",
        "The engine's bundled model: SAM's architecture (segment-anything's ImageEncoderViT, PromptEncoder,",
        "MaskDecoder, TwoWayTransformer) at reduced size, trained from scratch by `pointsam pretrain` on the",
        "engine's generated scenes" + (", then on a mix of them and real labelled buildings" if _real(stages) else "")
        + (", its encoder deepened on the way (the stages below)." if any(p.get("deepened") for p in stages) else "."),
        "It is small and fast for offline use on a CPU, not a replacement for SAM on every kind of imagery:",
        "pass an official checkpoint with `--model` for that.",
        "",
        f"- file: `{model_path.name}`, sha256 `{file_sha256(model_path)}`",
        f"- parameters: {provenance['parameters'] / 1e6:.2f} M; input 256 px chips; ImageNet pixel mean/std as SAM",
        *[f"- training stage {n}: {_stage_line(p)}" for n, p in enumerate(stages, 1)],
        f"- data: {provenance['data']}; {cfg['scenes_per_kind']} scenes per kind of {cfg['scene_size']} px",
        f"- wall time: {sum(p['wall_minutes'] for p in stages):.1f} min in all on {provenance['machine']}",
        "",
        f"## Quality on fresh scenes ({EVAL_SIZE} px, seeds {_eval_seeds()}), one click per object",
        "",
        "| scenes | mIoU | mF1 | merges | mIoU without calibration | merges without calibration "
        "| mask merges | mask merges without calibration | mIoU untrained |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in EVAL_SETS:
        t, p, m, pm, u = trained[kind], plain[kind], masks[kind], plain_masks[kind], untrained[kind]
        lines.append(f"| {kind} | {t['miou']:.3f} | {t['mf1']:.3f} | {t['merges']} | {p['miou']:.3f} | {p['merges']} "
                     f"| {m['merges']} | {pm['merges']} | {u['miou']:.3f} |")
    lines += ["", f"Dense buildings: density {DENSE}, {DENSE - 1:.0%} of the rows terraces of look-alike houses. "
              "Merges: predictions covering at least half of a second truth object, in the engine's output, where "
              "a pixel two masks claim goes to the higher logit. Mask merges: the same count on the model's own "
              "masks (`--keep-overlaps`), which shows what negative prompt calibration prevents before that rule "
              "hides it. Measured by `training/model_card.py` with the engine's `segment` and `evaluate`.", ""]
    lines += real_quality_lines(model_path)
    if _real(stages):
        lines += ["## Attribution", "", "Imagery: OpenAerialMap (HOTOSM and contributors), CC BY 4.0; SpaceNet 4 "
                  "Atlanta sample, CC BY-SA 4.0. Building footprints: © OpenStreetMap contributors, ODbL 1.0.", ""]
    card = model_path.with_suffix(".md")
    write_text(card, "\n".join(lines))
    echo("\n".join(lines))
    return card


def main(argv=None) -> None:
    """``python -m training.model_card [MODEL]``: measure a model again and rewrite its card (weights untouched)."""
    import argparse

    from pointsam_engine.sam.model import load_model, resolve_model_path

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("model", nargs="?", default=None, help="Model file or name (default: the bundled model).")
    parser.add_argument("--real", action="store_true", help="Only print the real-imagery table (writes nothing).")
    args = parser.parse_args(argv)
    path = resolve_model_path(args.model)
    if args.real:
        print("\n".join(real_quality_lines(path)))
        return
    write_model_card(path, load_model(str(path), device="cpu").provenance)


if __name__ == "__main__":
    main()
