"""Converting SAM's image encoder to OpenVINO's files, in a child process.

Tracing the encoder for the conversion holds the model two or three times over (about 5 GB for vit_b), all of it
at once; in a child process that peak is given back the moment the files are written, instead of staying the
high-water mark of a long run or of ``pointsam serve``. The child is a plain ``python -m`` process (a Dask
worker, being a daemon, may not fork children of its own). Weights still as their checkpoint file holds them
the child loads from that file itself: saving them for it would read the whole memory-mapped encoder into the
parent (about 360 MB for vit_b, kept as long as the parent runs). Other weights (an adapter's layers, training's)
it reads as the parent saved the encoder module. It writes the ``.xml`` and ``.bin`` beside each other, the ``.xml`` last, so a
reader finds both or none, its weights stored as float16 (half the file and the memory it maps; the runtime
computes in bf16 on CPUs with native bf16, a coarser rounding still, else in float32). Global attention is
traced with its relative positions as key dimensions (:func:`~pointsam_engine.sam.encoder.rel_pos_as_keys`):
OpenVINO keeps no ``tokens x tokens`` mask alive then.

    python -m pointsam_engine.sam.openvino_convert ENCODER.pt OUT.xml
    python -m pointsam_engine.sam.openvino_convert --checkpoint MODEL SHA256 OUT.xml
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Optional, Tuple

import torch

from ..errors import ModelError
from .encoder import rel_pos_as_keys


def convert(encoder: torch.nn.Module, xml: Path, checkpoint: Optional[Tuple[str, str]] = None) -> None:
    """Write ``encoder`` converted to OpenVINO as ``xml`` (and its ``.bin``), in a child process; ``ModelError`` with
    the child's last line when it fails. The parent's torch encoder is left as it is. ``checkpoint``: ``(path,
    sha256)`` of the file whose weights ``encoder`` holds as loaded (see
    :func:`~pointsam_engine.sam.precision.loaded_checkpoint`), for the child to load itself."""
    xml.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=xml.parent) as tmp:
        if checkpoint is None:
            source = [str(Path(tmp) / "encoder.pt")]
            torch.save(encoder, source[0])
        else:
            source = ["--checkpoint", *checkpoint]
        child = subprocess.Popen([sys.executable, "-m", __name__, *source, str(xml)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _, err = child.communicate()
        finally:  # interrupted (Ctrl-C, a cancelled job): the child does not outlive the call
            if child.poll() is None:
                child.kill()
                child.wait()
    if child.returncode != 0:
        last = (err.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
        raise ModelError(f"converting the image encoder to OpenVINO failed ({last}); run with --precision bf16 or fp32")


def _write(encoder: torch.nn.Module, xml: Path) -> None:
    import openvino as ov

    size = encoder.img_size
    with torch.no_grad(), warnings.catch_warnings(), rel_pos_as_keys():
        warnings.simplefilter("ignore")  # tracing warns about Python control flow on shapes (fixed here)
        model = ov.convert_model(encoder, example_input=torch.zeros(1, 3, size, size))
    with tempfile.TemporaryDirectory(dir=xml.parent) as tmp:
        ov.save_model(model, str(Path(tmp) / xml.name), compress_to_fp16=True)
        os.replace(Path(tmp) / xml.with_suffix(".bin").name, xml.with_suffix(".bin"))
        os.replace(Path(tmp) / xml.name, xml)


def _encoder_of(checkpoint: str, sha256: str) -> torch.nn.Module:
    """The image encoder of ``checkpoint``, loaded as the engine loads it, if the file still has this sha256."""
    from .model import load_model

    loaded = load_model(checkpoint, device="cpu", precision="fp32")
    if loaded.sha256 != sha256:
        sys.exit(f"{checkpoint} changed since the engine loaded it")
    return loaded.sam.image_encoder


if __name__ == "__main__":
    if sys.argv[1] == "--checkpoint":
        _write(_encoder_of(sys.argv[2], sys.argv[3]), Path(sys.argv[4]))
    else:
        _write(torch.load(sys.argv[1], weights_only=False), Path(sys.argv[2]))  # the parent's own file, just written
