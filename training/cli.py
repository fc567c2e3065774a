"""``pointsam pretrain``: options to a :class:`~training.pretrain.PretrainConfig`."""

from __future__ import annotations

import click

from .pretrain import PretrainConfig


@click.command()
@click.option("-o", "--output", default=PretrainConfig.output, show_default=True, help="Model file to write.")
@click.option("--steps", default=PretrainConfig.steps, show_default=True, type=int)
@click.option("--lr", default=PretrainConfig.lr, show_default=True, type=float)
@click.option("--seed", default=PretrainConfig.seed, show_default=True, type=int)
@click.option("--scenes", "scenes_per_kind", default=PretrainConfig.scenes_per_kind, show_default=True, type=int,
              help="Generated scenes per kind to crop training chips from.")
@click.option("--device", default="auto", show_default=True)
@click.option("--card/--no-card", default=True, show_default=True, help="Measure quality and write the model card.")
def pretrain(output, steps, lr, seed, scenes_per_kind, device, card) -> None:
    """Train the small bundled SAM (pointsam-tiny) from scratch on generated scenes."""
    from .pretrain import pretrain as run_pretrain

    cfg = PretrainConfig(output=output, steps=steps, lr=lr, seed=seed, scenes_per_kind=scenes_per_kind, device=device)
    provenance = run_pretrain(cfg, echo=click.echo)
    if card:
        from .model_card import write_model_card

        path = write_model_card(output, provenance, echo=click.echo)
        click.echo(f"model card: {path}")
