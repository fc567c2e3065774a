"""The ``pointsam`` command. Options become a :class:`SegmentConfig`; every ``PointSamError``
becomes one ``error: ...`` line on stderr and exit code 2 (click's usage errors exit 2 too)."""

from __future__ import annotations

import json
import os
import sys
import tempfile

import click

from . import __version__
from .config import SegmentConfig, parse_bands, parse_stretch
from .errors import OutputError, PointSamError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pointsam")
def main() -> None:
    """PointSAM: points over remote sensing imagery become instance polygons and boxes."""


@main.command()
@click.argument("raster", type=click.Path(dir_okay=False))
@click.argument("points", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="GeoPackage to write.")
@click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")
@click.option("--model", default=None, help="SAM checkpoint path (official vit_b/l/h or PointSAM file) or a registered name.")
@click.option("--model-type", type=click.Choice(["vit_b", "vit_l", "vit_h"]), default=None, help="Check the checkpoint is of this type.")
@click.option("--adapter", default=None, type=click.Path(dir_okay=False), help="Region adapter from pointsam train (for this --model).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or mps.")
@click.option("--bands", default=None, help="1-based bands for R,G,B (e.g. 4,3,2) or one band repeated (e.g. 1).")
@click.option("--stretch", default="2,98", show_default=True, help="Percentiles low,high; or minmax; or none.")
@click.option("--nodata", type=float, default=None, help="Nodata value (overrides the raster's tag).")
@click.option("--sar-db", is_flag=True, help="Apply 10*log10 to the values before stretching (SAR).")
@click.option("--assume-crs", default=None, help="CRS for a raster that has none, e.g. EPSG:32633.")
@click.option("--layer", default=None, help="Layer of a multi-layer point file.")
@click.option("--instance-field", default=None, help="Field whose equal values join points into one object.")
@click.option("--label-field", default=None, help="Field with 1 (positive) or 0 (negative) per point.")
@click.option("--class-field", default=None, help="Field carried to the output as 'class'.")
@click.option("--chip-scale", type=float, default=1.0, show_default=True, help="Source pixels per chip pixel (2 = half resolution).")
@click.option("--no-calibration", is_flag=True, help="Skip negative prompt calibration.")
@click.option("--calibration-iou", type=float, default=0.1, show_default=True, help="Mask IoU above which neighbours become negatives.")
@click.option("--keep-overlaps", is_flag=True, help="Keep each object's own mask where masks overlap (default: a shared pixel goes to the higher logit).")
@click.option("--min-area", type=float, default=0.0, show_default=True, help="Drop objects smaller than this (map units²).")
@click.option("--max-hole-area", type=float, default=None, help="Fill holes smaller than this (map units²; default 25 pixels).")
@click.option("--simplify", type=float, default=None, help="Simplification tolerance in map units (default one pixel; 0 = none).")
@click.option("--out-crs", default=None, help="CRS of the output layers (default: the raster's).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="Keep image embeddings on disk here.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None, help="Write the run report (JSON) here.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def segment(raster, points, output, overwrite, model, model_type, adapter, device, bands, stretch, nodata, sar_db, assume_crs,
            layer, instance_field, label_field, class_field, chip_scale, no_calibration, calibration_iou, keep_overlaps,
            min_area, max_hole_area, simplify, out_crs, cache_dir, report_path, quiet) -> None:
    """Segment one object per point of POINTS over RASTER into a GeoPackage."""
    def run():
        config = SegmentConfig(
            bands=parse_bands(bands), stretch=parse_stretch(stretch), nodata=nodata, sar_db=sar_db,
            assume_crs=assume_crs, layer=layer, instance_field=instance_field, label_field=label_field,
            class_field=class_field, chip_scale=chip_scale, model=model, model_type=model_type, adapter=adapter,
            device=device,
            cache_dir=cache_dir, calibration=not no_calibration, calibration_iou=calibration_iou, keep_overlaps=keep_overlaps,
            min_area=min_area, max_hole_area=max_hole_area, simplify=simplify, out_crs=out_crs, overwrite=overwrite)
        from .pipeline import segment as run_segment

        with _ProgressBar(disable=quiet) as bar:
            result = run_segment(raster, points, output, config, progress=bar.update)
        if report_path:
            _write_json(report_path, result.report)
        r = result.report
        click.echo(f"{r['instances']} instances, {r['skipped']} skipped, {r['encoder_passes']} encoder passes "
                   f"for {r['objects']} objects -> {result.output}", err=quiet)
    guard(run)


@main.command()
@click.argument("pred", type=click.Path(dir_okay=False))
@click.argument("truth", type=click.Path(dir_okay=False))
@click.option("--points", default=None, type=click.Path(dir_okay=False), help="The clicks the predictions came from (pairs by point_fid).")
@click.option("--raster", default=None, type=click.Path(dir_okay=False), help="Grid to compare on (default: the one recorded in PRED).")
@click.option("--truth-layer", default=None, help="Layer of TRUTH.")
@click.option("--points-layer", default=None, help="Layer of --points.")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False), help="Write the figures (miou, mf1, ...) here.")
def evaluate(pred, truth, points, raster, truth_layer, points_layer, json_path) -> None:
    """Per-instance IoU and F1 of a PointSAM GeoPackage PRED against TRUTH polygons."""
    def run():
        from .evaluate import evaluate_files, format_table

        figures = evaluate_files(pred, truth, points, raster=raster, truth_layer=truth_layer, points_layer=points_layer)
        click.echo(format_table(figures))
        if json_path:
            _write_json(json_path, figures)
    guard(run)


@main.command()
@click.option("--out", "out_dir", default="pointsam-demo", show_default=True, type=click.Path(file_okay=False), help="Folder for the files.")
@click.option("--model", default=None, help="Model to run (default: the bundled model).")
def demo(out_dir, model) -> None:
    """Generate a buildings and a ships scene, segment them, evaluate, and write previews."""
    def run():
        from .demo import run_demo

        os.makedirs(out_dir, exist_ok=True)
        run_demo(out_dir, model=model, echo=click.echo)
    guard(run)


@main.command()
@click.option("--model", default=None, help="Base model the adapter was trained for (default: the bundled model).")
@click.option("--adapter", required=True, type=click.Path(dir_okay=False), help="Adapter file from pointsam train.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Merged model file to write.")
@click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")
def export(model, adapter, output, overwrite) -> None:
    """Fold an adapter into its base model and write one self-describing model file."""
    def run():
        from .adapter import apply_adapter, export_merged
        from .model import load_model

        if os.path.exists(output) and not overwrite:
            raise OutputError(f"{output} exists; pass --overwrite to replace it or choose another -o")
        merged = export_merged(apply_adapter(load_model(model, device="cpu"), adapter), output)
        click.echo(f"wrote {merged}")
    guard(run)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback unless --allow-remote).")
@click.option("--port", default=0, show_default=True, type=click.IntRange(0, 65535), help="Port; 0 picks a free one.")
@click.option("--model", default=None, help="Model to keep loaded (default: the bundled model), as in pointsam segment.")
@click.option("--adapter", default=None, type=click.Path(dir_okay=False), help="Region adapter for --model.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or mps.")
@click.option("--cache-mb", default=512, show_default=True, type=click.IntRange(1), help="In-memory embedding cache (LRU).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="Also keep embeddings on disk here.")
@click.option("--token", default=None, help="Secret clients must send (default: a fresh random one, printed).")
@click.option("--allow-remote", is_flag=True, help="Allow a non-loopback --host (needs --token).")
@click.option("--connection-file", default=None, type=click.Path(dir_okay=False),
              help="Where to write {url, token, pid} (default: $XDG_RUNTIME_DIR/pointsam/serve.json).")
@click.option("--adapters-dir", "adapter_dirs", multiple=True, type=click.Path(file_okay=False),
              help="Folder of *.adapter.pt files to offer in /v1/models, besides the model folders (repeatable).")
def serve(host, port, model, adapter, device, cache_mb, cache_dir, token, allow_remote, connection_file,
          adapter_dirs) -> None:
    """Serve the engine's HTTP API (for the QGIS plugin and scripts); prints one JSON line with url and token."""
    def run():
        from .api.server import serve as run_server

        config = SegmentConfig(model=model, adapter=adapter, device=device, cache_mb=cache_mb, cache_dir=cache_dir)
        run_server(config, host=host, port=port, token=token, allow_remote=allow_remote,
                   connection_file=connection_file, adapter_dirs=adapter_dirs,
                   echo=lambda line: click.echo(line) or sys.stdout.flush())
    guard(run, interrupted="stopped")


def _add_plugin_commands() -> None:
    """Commands of other packages (``pointsam.commands`` entry points), e.g. ``pretrain`` from ``training``."""
    from importlib.metadata import entry_points

    for entry in entry_points(group="pointsam.commands"):
        try:
            main.add_command(entry.load(), entry.name)
        except ImportError:  # a partly installed package must not break the engine's own commands
            continue


def guard(run, interrupted: str = "interrupted; nothing was written") -> None:
    """Run a command body: engine errors become one line on stderr and exit code 2; Ctrl-C exits 130."""
    try:
        run()
    except PointSamError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo(f"error: {interrupted}", err=True)
        sys.exit(130)


class _ProgressBar:
    """tqdm bar fed by the pipeline's ``progress(fraction, stage)`` callback."""

    def __init__(self, disable: bool):
        from tqdm import tqdm

        self._bar = tqdm(total=1000, disable=disable, unit="‰", bar_format="{desc:<18}{bar}| {elapsed}<{remaining}")

    def update(self, fraction: float, stage: str) -> None:
        self._bar.set_description_str(stage)
        self._bar.update(max(0, int(fraction * 1000) - self._bar.n))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._bar.close()


def _write_json(path, data) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".json.tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, default=str)
    os.replace(tmp, path)


_add_plugin_commands()

if __name__ == "__main__":
    main()
