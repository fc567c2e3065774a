"""The training commands: their options parsed into a config, and the run started.

- ``pointsam pretrain``: a :class:`~training.pretrain.PretrainConfig` for :func:`training.pretrain.pretrain`;
- ``pointsam average``: two pretrained models' weights averaged (:func:`training.average.average_models`);
- ``pointsam train``: a :class:`~training.config.TrainConfig` (:func:`train_config`) for :func:`training.loop.train`;
- :func:`train_job`: the HTTP API's train jobs, with the same options as ``pointsam train``.

The engine finds the commands through the ``pointsam.commands`` entry point and the job through
``pointsam.jobs`` (pyproject.toml); it never imports this package.
"""

from __future__ import annotations

import click

from pointsam_engine.config import SegmentConfig, stretch_text
from pointsam_engine.errors import OptionError
from pointsam_engine.options import CHOICES, NUMBERS

from .config import TrainConfig
from .pretrain import PretrainConfig
from .selftrain import SelfTrainOptions


@click.command()
@click.option("-o", "--output", default=PretrainConfig.output, show_default=True, help="Model file to write.")
@click.option("--steps", default=PretrainConfig.steps, show_default=True, type=int)
@click.option("--lr", default=PretrainConfig.lr, show_default=True, type=float)
@click.option("--seed", default=PretrainConfig.seed, show_default=True, type=int)
@click.option("--scenes", "scenes_per_kind", default=PretrainConfig.scenes_per_kind, show_default=True, type=int,
              help="Generated scenes per kind to crop training chips from.")
@click.option("--objects", "objects_per_image", default=PretrainConfig.objects_per_image, show_default=True, type=int,
              help="Objects prompted per training chip.")
@click.option("--init", default="", help="Continue training from this model file instead of random weights.")
@click.option("--kind-share", default=None, help="Sampling share per scene kind, e.g. ships=0.7,buildings=0.3 (default: alike).")
@click.option("--focal-alpha", default=PretrainConfig.focal_alpha, show_default=True, type=float)
@click.option("--dense-share", default=PretrainConfig.dense_share, show_default=True, type=click.FloatRange(0, 1),
              help="Share of buildings scenes drawn dense, with terraces of look-alike houses.")
@click.option("--real-share", default=PretrainConfig.real_share, show_default=True, type=click.FloatRange(0, 1),
              help="Share of chips cropped from real labelled buildings in ../shared/data (Banepa's training chips, Atlanta).")
@click.option("--real-zoom", default=",".join(str(z) for z in PretrainConfig.real_zoom), show_default=True,
              help="Range of the factor real chips are resampled by, e.g. 0.35,1.8 (below 1: coarser pixels).")
@click.option("--encoder-depth", default=PretrainConfig.encoder_depth, show_default=True, type=click.IntRange(0),
              help="Deepen the --init model's encoder to this many blocks first (more than it has): copies of its "
                   "blocks, spread evenly, are inserted after them and start as the identity. 0 keeps its depth.")
@click.option("--device", default=PretrainConfig.device, show_default=True)
@click.option("--card/--no-card", default=True, show_default=True, help="Measure quality and write the model card.")
def pretrain(output, steps, lr, seed, scenes_per_kind, objects_per_image, init, kind_share, focal_alpha, dense_share,
             real_share, real_zoom, encoder_depth, device, card) -> None:
    """Train the small bundled SAM (pointsam-tiny) from scratch on generated scenes."""
    from .pretrain import pretrain as run_pretrain

    cfg = PretrainConfig(output=output, steps=steps, lr=lr, seed=seed, scenes_per_kind=scenes_per_kind,
                         objects_per_image=objects_per_image, init=init, device=device, focal_alpha=focal_alpha,
                         kind_share=_shares(kind_share), dense_share=dense_share, real_share=real_share,
                         real_zoom=_zoom(real_zoom), encoder_depth=encoder_depth)
    provenance = run_pretrain(cfg, echo=click.echo)
    if card:
        from .model_card import write_model_card

        path = write_model_card(output, provenance, echo=click.echo)
        click.echo(f"model card: {path}")


@click.command()
@click.argument("first")
@click.argument("second")
@click.option("--weight", required=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="FIRST's share of every weight; SECOND gets the rest.")
@click.option("-o", "--output", required=True, help="Model file to write.")
@click.option("--overwrite", is_flag=True, help="Replace the output file if it exists.")
@click.option("--card/--no-card", default=True, show_default=True, help="Measure quality and write the model card.")
def average(first, second, weight, output, overwrite, card) -> None:
    """Average two pointsam pretrain models of one architecture (a model soup); the card lists it as a stage."""
    from .average import average_models

    provenance = average_models(first, second, weight, output, overwrite)
    click.echo(f"saved {output}")
    if card:
        from .model_card import write_model_card

        click.echo(f"model card: {write_model_card(output, provenance, echo=click.echo)}")


def _zoom(text: str) -> tuple:
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not two numbers like 0.5,1.8", param_hint="--real-zoom") from None
    if not 0 < low <= high:
        raise click.BadParameter(f"{text!r} needs 0 < low <= high, e.g. 0.5,1.8", param_hint="--real-zoom")
    return (low, high)


def _shares(text):
    if not text:
        return None
    pairs = [part.split("=") for part in text.split(",")]
    return {kind.strip(): float(value) for kind, value in pairs}


MAX_BLOCK = 255  # far beyond any SAM encoder (vit_h: 32 blocks); guards against ranges like 0-99999999999


def _blocks(text):
    """``--blocks 1-11`` or ``6,7,8`` -> a list of block numbers; a one-line error for anything else."""
    if not text:
        return None
    out = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or not (hi or lo).isdigit() or max(int(lo), int(hi or lo)) > MAX_BLOCK:
            raise OptionError(f"--blocks {text!r} is not understood; give encoder block numbers like 1-11 or 6,7,8")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


@click.command()
@click.option("--raster", "rasters", multiple=True, required=True, help="Raster of the region (repeat, paired with --points).")
@click.option("--points", "points", multiple=True, required=True, help="Point layer over the raster before it (repeat).")
@click.option("-o", "--output", required=True, help="Adapter file to write (NAME.adapter.pt).")
@click.option("--model", default=None, help="Base model (default: the bundled model), as in pointsam segment.")
@click.option("--steps", default=TrainConfig.steps, show_default=True, type=NUMBERS["steps"].click_type())
@click.option("--lr", default=TrainConfig.lr, show_default=True, type=NUMBERS["lr"].click_type(),
              help="Adam learning rate (WeSAM's; PointSAM's 5e-4 drifts here, see docs/accuracy.md).")
@click.option("--seed", default=TrainConfig.seed, show_default=True, type=NUMBERS["seed"].click_type())
@click.option("--rank", default=TrainConfig.rank, show_default=True, type=NUMBERS["rank"].click_type(), help="LoRA rank.")
@click.option("--blocks", default=None, help="Encoder blocks to adapt, e.g. 1-11 or 6,7,8 (default: all but the first).")
@click.option("--train-decoder", is_flag=True, help="Fine-tune the mask decoder too.")
@click.option("--val-fraction", default=TrainConfig.val_fraction, show_default=True, type=NUMBERS["val_fraction"].click_type(),
              help="Share of clicks held out, in spatial blocks.")
@click.option("--val-polygons", multiple=True, help="Reference polygons per raster, for mIoU on the held-out blocks.")
@click.option("--val-every", default=TrainConfig.val_every, show_default=True, type=NUMBERS["val_every"].click_type())
@click.option("--checkpoint-every", default=TrainConfig.checkpoint_every, show_default=True,
              type=NUMBERS["checkpoint_every"].click_type())
@click.option("--background", default=SelfTrainOptions.background, show_default=True, type=NUMBERS["background"].click_type(),
              help="Random background negatives per object.")
@click.option("--no-calibration", is_flag=True, help="Plain self-training: no negative prompt calibration of the teacher.")
@click.option("--no-prototypes", is_flag=True, help="No prototype-based regularization.")
@click.option("--prototype-weight", default=SelfTrainOptions.prototype_weight, show_default=True,
              type=NUMBERS["prototype_weight"].click_type())
@click.option("--anchor-weight", default=SelfTrainOptions.anchor_weight, show_default=True,
              type=NUMBERS["anchor_weight"].click_type(),
              help="Weight of the anchor: the student also fits the base model's masks, which stops self-training's "
                   "drift (0: PointSAM as published; see docs/accuracy.md).")
@click.option("--bands", default=None, help="As in pointsam segment.")
@click.option("--stretch", default=stretch_text(SegmentConfig.stretch), show_default=True)
@click.option("--nodata", type=NUMBERS["nodata"].click_type(), default=None)
@click.option("--sar-db", is_flag=True)
@click.option("--assume-crs", default=None)
@click.option("--layer", default=None)
@click.option("--instance-field", default=None)
@click.option("--label-field", default=None)
@click.option("--chip-scale", type=NUMBERS["chip_scale"].click_type(), default=SegmentConfig.chip_scale, show_default=True)
@click.option("--accelerator", default=TrainConfig.accelerator, show_default=True, type=CHOICES["accelerator"].click_type(),
              help="Lightning Fabric: cpu, gpu, mps or auto.")
@click.option("--devices", default=TrainConfig.devices, show_default=True, type=NUMBERS["devices"].click_type())
@click.option("--strategy", default=TrainConfig.strategy, show_default=True, help="Lightning Fabric strategy, e.g. ddp.")
@click.option("--precision", default=TrainConfig.precision, show_default=True, type=CHOICES["precision"].click_type(),
              help="Lightning Fabric precision, e.g. bf16-mixed.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint beside the output.")
@click.option("--overwrite", is_flag=True, help="Replace an existing adapter.")
def train(rasters, points, output, model, steps, lr, seed, rank, blocks, train_decoder, val_fraction, val_polygons,
          val_every, checkpoint_every, background, no_calibration, no_prototypes, prototype_weight, anchor_weight, bands,
          stretch, nodata, sar_db, assume_crs, layer, instance_field, label_field, chip_scale, accelerator, devices,
          strategy, precision, resume, overwrite) -> None:
    """Adapt SAM to a region from its point layers alone (PointSAM: LoRA self-training)."""
    options = dict(locals())  # the options, before any other name is bound here
    from pointsam_engine.cli import guard

    def run():
        from .loop import train as run_train

        run_train(train_config(**options), echo=click.echo)
    guard(run, interrupted="interrupted; the checkpoint beside the output keeps the progress, --resume continues")


def train_config(rasters, points, output, model, steps, lr, seed, rank, blocks, train_decoder, val_fraction,
                 val_polygons, val_every, checkpoint_every, background, no_calibration, no_prototypes,
                 prototype_weight, anchor_weight, bands, stretch, nodata, sar_db, assume_crs, layer, instance_field,
                 label_field, chip_scale, accelerator, resume, overwrite, devices=TrainConfig.devices,
                 strategy=TrainConfig.strategy, precision=TrainConfig.precision):
    """A :class:`~training.config.TrainConfig` from ``pointsam train``'s options (also the HTTP API's train jobs)."""
    from pointsam_engine.config import parse_bands, parse_stretch

    segment = SegmentConfig(bands=parse_bands(bands), stretch=parse_stretch(stretch), nodata=nodata, sar_db=sar_db,
                            assume_crs=assume_crs, layer=layer, instance_field=instance_field,
                            label_field=label_field, chip_scale=chip_scale, model=model)
    opts = SelfTrainOptions(background=background, calibration=not no_calibration, prototypes=not no_prototypes,
                            prototype_weight=prototype_weight, anchor_weight=anchor_weight)
    return TrainConfig(rasters=tuple(rasters), points=tuple(points), output=output, model=model,
                       val_polygons=tuple(val_polygons), steps=steps, lr=lr, seed=seed, rank=rank,
                       blocks=_blocks(blocks), train_decoder=train_decoder, val_fraction=val_fraction,
                       val_every=val_every, checkpoint_every=checkpoint_every, selftrain=opts, segment=segment,
                       accelerator=accelerator, devices=devices, strategy=strategy, precision=precision,
                       resume=resume, overwrite=overwrite)


def train_job(options: dict):
    """The HTTP API's train job (entry point ``pointsam.jobs: train``): checks inputs now, returns the work."""
    from .config import check_inputs
    from .loop import train as run_train

    cfg = train_config(**options)
    check_inputs(cfg)

    def work(progress, cancel):
        from pointsam_engine.api.models import adapter_header

        summary = run_train(cfg, echo=lambda line: None, progress=progress, cancel=cancel)
        best = summary.get("best")
        # kept_step 0: validation found no step better than the base model, so the adapter changes nothing
        return {"output": str(cfg.output), "summary": summary, "kept_step": best["step"] if best else summary.get("steps"),
                "adapter": adapter_header(summary.get("adapter", cfg.output))}

    return work
