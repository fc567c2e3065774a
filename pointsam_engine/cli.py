"""The ``pointsam`` command. Options become a :class:`SegmentConfig`; every ``PointSamError``
becomes one ``error: ...`` line on stderr and exit code 2 (click's usage errors exit 2 too)."""

from __future__ import annotations

import os
import sys

import click

from . import __version__
from .commands import PluginGroup
from .config import BATCH, INSTANCES, SERVE_CACHE_MB, SERVE_MAX_PARALLEL, SegmentConfig, parse_bands, parse_stretch, stretch_text
from .demo import DEMO_FOLDER
from .errors import PointSamError
from .options import CHOICES, NUMBERS


class _OneLineErrors(PluginGroup):
    """click's own usage errors (a folder given as a file, a missing argument) as one ``error:`` line and
    exit code 2, like the engine's, instead of click's three-line usage block."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            if isinstance(exc, getattr(click.exceptions, "NoArgsIsHelpError", ())):  # `pointsam` alone: the help
                exc.show()
                sys.exit(0)
            where = exc.ctx.command_path if exc.ctx else "pointsam"
            _fail(f"{exc.format_message().rstrip('.')}; see `{where} --help`")
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except PointSamError as exc:  # raised while click converts an option (options.Number.click_type)
            _fail(str(exc))
        except click.Abort:
            _fail("interrupted; nothing was written", 130)
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


_REPORT_HELP = "Write the run report (JSON) here; an existing file is replaced only with --overwrite."
_PRECISION_HELP = ("Encoder arithmetic: auto (fastest accurate here: for SAM on a CPU with native bf16 OpenVINO, on "
                   "other x86 CPUs int8, elsewhere OpenVINO; SAM 2.1 in bf16 where the CPU has it), fp32 (exact), bf16, "
                   "fp16 (GPU), int8 (CPU), openvino (CPU, SAM).")


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {' '.join(str(message).split())}", err=True)
    sys.exit(code)


# the options of a segmentation run, shared by `segment` and `batch` (SegmentConfig's fields)
_SEGMENT_OPTIONS = (
    click.option("--overwrite", is_flag=True,
                 help="Replace layers instances, boxes, bboxes, skipped if the GeoPackage has them (never other layers)."),
    click.option("--model", default=None, help="SAM or SAM 2.1 checkpoint path (official vit_b/l/h, sam2.1_hiera_*.pt, "
                 "or a PointSAM file) or a registered name (default: the bundled model, pointsam models lists them)."),
    click.option("--model-type", type=CHOICES["model_type"].click_type(), default=None,
                    help="Check the checkpoint is of this type."),
    click.option("--adapter", default=None, help="Region adapter from pointsam train (for this --model)."),
    click.option("--device", default=SegmentConfig.device, show_default=True, help="auto, cpu, cuda or mps."),
    click.option("--precision", default=SegmentConfig.precision, show_default=True,
                    type=CHOICES["encoder_precision"].click_type(), help=_PRECISION_HELP),
    click.option("--bands", default=None, help="1-based bands for R,G,B (e.g. 4,3,2) or one band repeated (e.g. 1)."),
    click.option("--stretch", default=stretch_text(SegmentConfig.stretch), show_default=True,
                 help="Percentiles low,high; or minmax; or none."),
    click.option("--nodata", type=NUMBERS["nodata"].click_type(), default=None,
                    help="Nodata value (overrides the raster's tag)."),
    click.option("--sar-db", is_flag=True, help="Apply 10*log10 to the values before stretching (SAR)."),
    click.option("--assume-crs", default=None, help="CRS for a raster that has none, e.g. EPSG:32633."),
    click.option("--layer", default=None, help="Layer of a multi-layer point file."),
    click.option("--instance-field", default=None, help="Field whose equal values join points into one object."),
    click.option("--label-field", default=None, help="Field with 1 (positive) or 0 (negative) per point."),
    click.option("--class-field", default=None, help="Field carried to the output as 'class'."),
    click.option("--chip-scale", type=NUMBERS["chip_scale"].click_type(), default=SegmentConfig.chip_scale, show_default=True,
                 help="Source pixels per chip pixel (2 = half resolution), 0.25 to 64."),
    click.option("--no-calibration", is_flag=True, help="Skip negative prompt calibration."),
    click.option("--calibration-iou", type=NUMBERS["calibration_iou"].click_type(), default=SegmentConfig.calibration_iou,
                 show_default=True, help="Mask IoU above which neighbours become negatives."),
    click.option("--keep-overlaps", is_flag=True,
                 help="Keep each object's own mask where masks overlap (default: a shared pixel goes to the higher logit)."),
    click.option("--min-area", type=NUMBERS["min_area"].click_type(), default=SegmentConfig.min_area, show_default=True,
                 help="Drop objects smaller than this (m², any CRS)."),
    click.option("--max-hole-area", type=NUMBERS["max_hole_area"].click_type(), default=SegmentConfig.max_hole_area,
                 help="Fill holes smaller than this (m², any CRS; default 25 pixels)."),
    click.option("--simplify", type=NUMBERS["simplify"].click_type(), default=SegmentConfig.simplify,
                 help="Simplification tolerance in metres, any CRS (default one pixel; 0 = none)."),
    click.option("--regularize", type=CHOICES["regularize"].click_type(), default=SegmentConfig.regularize, show_default=True,
                 help=CHOICES["regularize"].help),
    click.option("--out-crs", default=None, help="CRS of the output layers (default: the raster's)."),
    click.option("--cache-dir", default=None, help="Keep image embeddings on disk here (a folder)."),
)


def _segment_options(command):
    for option in reversed(_SEGMENT_OPTIONS):
        command = option(command)
    return command


def _segment_config(bands, stretch, no_calibration, **options) -> SegmentConfig:
    """The :class:`SegmentConfig` of the shared segment options, as click hands them over."""
    return SegmentConfig(bands=parse_bands(bands), stretch=parse_stretch(stretch), calibration=not no_calibration,
                         **options)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pointsam")
def main() -> None:
    """PointSAM: points over remote sensing imagery become instance polygons and boxes."""


@main.command()
@click.argument("raster")
@click.argument("points")
@click.option("-o", "--output", required=True,
              help="GeoPackage to write; an existing one keeps its other layers and styles.")
@_segment_options
@click.option("--report", "report_path", default=None, help=_REPORT_HELP)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, and the summary on stderr.")
@click.option("--progress", "force_progress", is_flag=True, help="A progress bar even when stderr is not a terminal.")
def segment(raster, points, output, overwrite, model, model_type, adapter, device, precision, bands, stretch, nodata, sar_db,
            assume_crs, layer, instance_field, label_field, class_field, chip_scale, no_calibration, calibration_iou,
            keep_overlaps, min_area, max_hole_area, simplify, regularize, out_crs, cache_dir, report_path, quiet,
            force_progress) -> None:
    """Segment one object per point of POINTS over RASTER into a GeoPackage."""
    def run():
        config = _segment_config(
            bands, stretch, no_calibration, nodata=nodata, sar_db=sar_db,
            assume_crs=assume_crs, layer=layer, instance_field=instance_field, label_field=label_field,
            class_field=class_field, chip_scale=chip_scale, model=model, model_type=model_type, adapter=adapter,
            device=device, precision=precision, cache_dir=cache_dir, calibration_iou=calibration_iou,
            keep_overlaps=keep_overlaps, min_area=min_area, max_hole_area=max_hole_area, simplify=simplify,
            regularize=regularize, out_crs=out_crs, overwrite=overwrite)
        from .pipeline import check_segment_inputs
        from .pipeline import segment as run_segment

        check_segment_inputs(raster, points, output, config, reports={"--report": report_path})
        new_file = _new_file(output)
        with _ProgressBar(disable=_no_bar(quiet, force_progress)) as bar:
            result = run_segment(raster, points, output, config, progress=bar.update)
        _write_report(report_path, result.report, output, new_file)
        r = result.report
        click.echo(f"{r['instances']} instances, {r['skipped']} skipped, {r['encoder_passes']} encoder passes "
                   f"for {r['objects']} objects -> {result.output}", err=quiet)
    guard(run)


@main.command()
@click.argument("points")
@click.option("-o", "--output", required=True, help="Merged GeoPackage to write (tasks go to OUTPUT.work/ beside it).")
@click.option("--rasters", "raster_specs", required=True, multiple=True,
              help="A folder, a glob ('tiles/*.tif'), a list file (.txt, one path a line) or a mosaic .vrt; repeatable.")
@_segment_options
@click.option("--workers", type=NUMBERS["workers"].click_type(), default=BATCH.workers,
              help="Worker processes of the local Dask cluster (default: one per core).")
@click.option("--scheduler", default=None, help="Address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786.")
@click.option("--resume", is_flag=True, help="Keep the tasks an earlier run finished (OUTPUT.work/); run the others.")
@click.option("--report", "report_path", default=None, help=_REPORT_HELP)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, and the summary on stderr.")
@click.option("--progress", "force_progress", is_flag=True, help="A progress bar even when stderr is not a terminal.")
def batch(points, output, raster_specs, workers, scheduler, resume, report_path, quiet, force_progress, bands, stretch,
          no_calibration, **options) -> None:
    """Segment the objects of POINTS over many rasters on Dask into one GeoPackage (resumable)."""
    from .batch.run import cancelled_message

    def run():
        from .batch import batch_segment, check_batch_inputs

        config = _segment_config(bands, stretch, no_calibration, **options)
        check_batch_inputs(points, output, raster_specs, config, resume=resume, workers=workers, scheduler=scheduler,
                           reports={"--report": report_path})
        new_file = _new_file(output)
        with _ProgressBar(disable=_no_bar(quiet, force_progress)) as bar:
            result = batch_segment(points, output, raster_specs, config, workers=workers, scheduler=scheduler,
                                   resume=resume, progress=bar.update,
                                   echo=lambda line: None if quiet else click.echo(line, err=True))
        _write_report(report_path, result.report, output, new_file)
        r = result.report
        click.echo(f"{r['instances']} instances, {r['skipped']} skipped, {r['failed']} failed tasks, "
                   f"{r['ran']} of {r['tasks']} tasks run -> {result.output}", err=quiet)
    guard(run, interrupted=cancelled_message(output))


def _new_file(output) -> bool:
    """Whether ``output`` is a GeoPackage this run creates (removed again when its report cannot be written)."""
    return not os.path.isfile(output) or os.path.getsize(output) == 0


def _write_report(report_path, report: dict, output, new_file: bool) -> None:
    """``--report``: the run report as JSON, after the GeoPackage; if it cannot be written (e.g. the disk filled
    up), a GeoPackage this run created goes too."""
    if not report_path:
        return
    from .output import write_json

    try:
        write_json(report_path, report)
    except PointSamError:
        if new_file:
            os.unlink(output)
        raise


@main.command()
@click.argument("pred")
@click.argument("truth")
@click.option("--points", default=None, help="The clicks the predictions came from (pairs by point_fid).")
@click.option("--raster", default=None, help="Grid to compare on (default: the one recorded in PRED).")
@click.option("--pred-layer", default=INSTANCES, show_default=True, help="Layer of PRED.")
@click.option("--truth-layer", default=None, help="Layer of TRUTH.")
@click.option("--points-layer", default=None, help="Layer of --points.")
@click.option("--json", "json_path", default=None, help="Write the figures (miou, mf1, ...) here.")
@click.option("--overwrite", is_flag=True, help="Replace the --json file if it exists.")
def evaluate(pred, truth, points, raster, pred_layer, truth_layer, points_layer, json_path, overwrite) -> None:
    """Per-instance IoU and F1 of a PointSAM GeoPackage PRED against TRUTH polygons."""
    def run():
        from .evaluate import check_inputs, evaluate_files, format_table
        from .output import check_distinct, check_file_target, write_json

        layers = dict(raster=raster, truth_layer=truth_layer, points_layer=points_layer, pred_layer=pred_layer)
        if json_path:
            check_distinct({"--json": json_path}, {"PRED": pred, "TRUTH": truth, "--points": points, "--raster": raster})
            check_file_target(json_path, overwrite, "--json")
        check_inputs(pred, truth, points, **layers)
        figures = evaluate_files(pred, truth, points, **layers)
        if json_path:
            write_json(json_path, figures)
        click.echo(format_table(figures))
    guard(run)


@main.command()
@click.option("--out", "out_dir", default=DEMO_FOLDER, show_default=True, help="Folder for the files.")
@click.option("--model", default=None, help="Model to run (default: the bundled model).")
def demo(out_dir, model) -> None:
    """Generate a buildings and a ships scene, segment them, evaluate, and write previews."""
    def run():
        from .demo.run import run_demo
        from .output import check_folder

        check_folder(out_dir, "--out", create=True)
        if model is not None:
            from .sam.model import resolve_model_path

            resolve_model_path(model)
        os.makedirs(out_dir, exist_ok=True)
        run_demo(out_dir, model=model, echo=click.echo)
    guard(run)


@main.command()
@click.option("--model", default=None, help="Base model the adapter was trained for (default: the bundled model).")
@click.option("--adapter", required=True, help="Adapter file from pointsam train.")
@click.option("-o", "--output", required=True, help="Merged model file to write.")
@click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")
def export(model, adapter, output, overwrite) -> None:
    """Fold an adapter into its base model and write one self-describing model file."""
    def run():
        from .output import check_distinct, check_file_target, disk_error
        from .sam.adapter import export_merged, load_adapted_model

        check_distinct({"-o": output}, {"--adapter": adapter, "--model": model if model and os.path.exists(model) else None})
        check_file_target(output, overwrite, "-o")
        loaded = load_adapted_model(model, adapter, device="cpu", precision="fp32")  # merges float weights
        try:
            merged = export_merged(loaded, output)
        except PointSamError:
            raise
        except OSError as exc:
            raise disk_error(exc, output) from None
        except RuntimeError as exc:  # torch.save reports a failed write (disk full) as a RuntimeError
            raise disk_error(OSError(0, str(exc).splitlines()[0] if str(exc) else "write failed"), output) from None
        click.echo(f"wrote {merged}")
    guard(run)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback unless --allow-remote).")
@click.option("--port", default=0, show_default=True, type=click.IntRange(0, 65535), help="Port; 0 picks a free one.")
@click.option("--model", default=None, help="Model to keep loaded (default: the bundled model), as in pointsam segment.")
@click.option("--adapter", default=None, help="Region adapter for --model.")
@click.option("--device", default=SegmentConfig.device, show_default=True, help="auto, cpu, cuda or mps.")
@click.option("--precision", default=SegmentConfig.precision, show_default=True, type=CHOICES["encoder_precision"].click_type(),
              help=_PRECISION_HELP)
@click.option("--cache-mb", default=SERVE_CACHE_MB, show_default=True, type=NUMBERS["cache_mb"].click_type(),
              help="In-memory embedding cache (LRU).")
@click.option("--cache-dir", default=None, help="Also keep embeddings on disk here (a folder).")
@click.option("--token", default=None, help="Secret clients must send (default: a fresh random one, printed).")
@click.option("--allow-remote", is_flag=True, help="Allow a non-loopback --host (needs --token).")
@click.option("--connection-file", default=None,
              help="Where to write {url, token, pid} (default: $XDG_RUNTIME_DIR/pointsam/serve.json).")
@click.option("--adapters-dir", "adapter_dirs", multiple=True,
              help="Folder of *.adapter.pt files to offer in /v1/models, besides the model folders (repeatable).")
@click.option("--max-parallel", default=SERVE_MAX_PARALLEL, show_default=True, type=NUMBERS["max_parallel"].click_type(),
              help="Clicks (predict, prefetch) that may run the encoder at once; more wait their turn.")
@click.option("--output-root", default=None,
              help="Jobs may write only inside this folder (default: anywhere the user may write).")
@click.option("--watch-parent", is_flag=True,
              help="Stop (cancelling jobs) when the process that started this one ends, even by kill -9, "
                   "or closes this one's stdin (start it with stdin as a pipe).")
def serve(host, port, model, adapter, device, precision, cache_mb, cache_dir, token, allow_remote, connection_file,
          adapter_dirs, max_parallel, output_root, watch_parent) -> None:
    """Serve the engine's HTTP API (for the QGIS plugin and scripts); prints one JSON line with url and token."""
    def run():
        from .api.server import serve as run_server
        from .output import check_folder, check_writable

        config = SegmentConfig(model=model, adapter=adapter, device=device, precision=precision, cache_mb=cache_mb,
                               cache_dir=cache_dir)
        if cache_dir:
            check_folder(cache_dir, "--cache-dir", create=True)
        for folder in adapter_dirs:
            check_folder(folder, "--adapters-dir")
        if output_root:
            check_folder(output_root, "--output-root")
        if connection_file:
            check_writable(connection_file, "--connection-file")
        run_server(config, host=host, port=port, token=token, allow_remote=allow_remote,
                   connection_file=connection_file, adapter_dirs=adapter_dirs, watch_parent=watch_parent,
                   max_parallel=max_parallel, output_root=output_root,
                   echo=lambda line: click.echo(line) or sys.stdout.flush())
    guard(run, interrupted="stopped")


@main.group()
def models() -> None:
    """List, download (sha256-verified), verify and remove the official SAM checkpoints vit_b, vit_l, vit_h."""


@models.command("list")
def models_list() -> None:
    """Each official checkpoint: size, sha256 state, where it is installed; and where downloads go."""
    def run():
        from .catalog import CATALOG, download_dir, installed_path
        from .download import state

        click.echo(f"model folder (downloads go here): {download_dir()}")
        rows = [("name", "size", "sha256", "installed")]
        for entry in CATALOG.values():
            path = installed_path(entry.name)
            rows.append((entry.name, f"{entry.size / 1e6:,.0f} MB", state(entry, path), str(path) if path else "-"))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        for row in rows:
            click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
    guard(run)


@models.command("pull")
@click.argument("name")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def models_pull(name, quiet) -> None:
    """Download the official checkpoint NAME (vit_b, vit_l, vit_h; SAM 2.1: hiera_t, hiera_s, hiera_b+, hiera_l) into
    the model folder, checking its sha256."""
    def run():
        from tqdm import tqdm

        from .catalog import checkpoint
        from .download import pull

        size = checkpoint(name).size
        with tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                  disable=quiet or not sys.stderr.isatty()) as bar:
            result = pull(name, progress=lambda fraction, _stage: bar.update(int(fraction * size) - bar.n))
        done = "downloaded and verified" if result["downloaded"] else "already installed and verified"
        click.echo(f"{result['name']}: {done}: {result['path']}")
    guard(run, interrupted="interrupted; the same pull resumes the download")


@models.command("verify")
@click.argument("name")
def models_verify(name) -> None:
    """Check the installed file of NAME against the official sha256 (exit code 1 when it differs)."""
    def run():
        from .catalog import checkpoint
        from .download import verify

        result, expected = verify(name), checkpoint(name).sha256
        if not result["ok"]:
            click.echo(f"error: {result['path']} is not the official {result['name']} (sha256 {result['sha256'][:12]}…, "
                       f"expected {expected[:12]}…); run `pointsam models remove {result['name']}` and pull it again",
                       err=True)
            sys.exit(1)
        click.echo(f"{result['name']}: sha256 ok ({result['sha256']}): {result['path']}")
    guard(run)


@models.command("remove")
@click.argument("name")
def models_remove(name) -> None:
    """Delete the installed file of NAME (and any partial download of it)."""
    def run():
        from .download import remove

        click.echo(f"removed {remove(name)['removed']}")
    guard(run)


def guard(run, interrupted: str = "interrupted; nothing was written") -> None:
    """Run a command body: engine errors, and the OS's (disk full, a file gone mid-run), become one line on
    stderr and exit code 2; Ctrl-C, and SIGTERM, exit 130 after the cleanup (no temporary file stays)."""
    previous = _sigterm_as_interrupt()
    try:
        run()
    except PointSamError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail(interrupted, 130)
    except MemoryError:
        _fail("out of memory; close other programs, use a smaller model or a larger --chip-scale")
    except OSError as exc:  # met mid-run, past the checks made up front
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        _fail(f"{exc.strerror or exc}{where}; check the files and the free disk space and run again "
              "(nothing was written)")
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)


def _sigterm_as_interrupt():
    """SIGTERM (kill, a job scheduler) unwinds like Ctrl-C, so atomic writes remove their temporary files."""
    import signal
    import threading

    def interrupt(*_):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, interrupt)


def _no_bar(quiet: bool, force: bool) -> bool:
    """Progress bars only on a terminal (or with --progress); never with -q."""
    return quiet or not (force or sys.stderr.isatty())


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


if __name__ == "__main__":
    main()
