"""The official segment-anything checkpoints and the folders registered models live in.

One table, :data:`CATALOG`: name, file, size and sha256 of each checkpoint Meta published with
segment-anything (https://github.com/facebookresearch/segment-anything#model-checkpoints). Names
(``vit_b`` ...) refer to these files wherever a model is asked for; :mod:`pointsam_engine.download`
fetches and checks them. Standard library only, so listing models never imports torch.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from .errors import ModelError

OFFICIAL_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything"
BASE_URL_VARIABLE = "POINTSAM_MODEL_BASE_URL"  # another server holding the same files (a mirror; tests)


@dataclass(frozen=True)
class Checkpoint:
    """One official checkpoint: the name it is asked for by, its file, and what the file must be."""

    name: str
    file: str
    size: int  # bytes
    sha256: str

    @property
    def official_url(self) -> str:
        return f"{OFFICIAL_BASE_URL}/{self.file}"

    @property
    def url(self) -> str:
        """Where :func:`~pointsam_engine.download.pull` fetches it: ``$POINTSAM_MODEL_BASE_URL`` or the official URL."""
        base = os.environ.get(BASE_URL_VARIABLE, "").strip() or OFFICIAL_BASE_URL
        return f"{base.rstrip('/')}/{self.file}"


# sizes and sha256 as published files hash; the model type is also read from the weights (model.py)
CATALOG: Dict[str, Checkpoint] = {c.name: c for c in (
    Checkpoint("vit_b", "sam_vit_b_01ec64.pth", 375_042_383,
               "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
    Checkpoint("vit_l", "sam_vit_l_0b3195.pth", 1_249_524_607,
               "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
    Checkpoint("vit_h", "sam_vit_h_4b8939.pth", 2_564_550_879,
               "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
)}


def checkpoint(name: str) -> Checkpoint:
    """The catalogue entry for ``name`` (``vit_b``, also ``sam_vit_b``); one line naming the valid names if none."""
    entry = CATALOG.get(str(name).removeprefix("sam_"))
    if entry is None:
        raise ModelError(f"{name!r} is not an official SAM checkpoint; use one of {', '.join(CATALOG)}")
    return entry


def model_dirs() -> List[Path]:
    """Folders searched for registered models: ``$POINTSAM_MODELS`` (path list), then ``~/.cache/pointsam/models``."""
    dirs = [Path(p) for p in os.environ.get("POINTSAM_MODELS", "").split(os.pathsep) if p]
    return dirs + [Path.home() / ".cache" / "pointsam" / "models"]


def download_dir() -> Path:
    """Where downloads go: the first model folder (the one a registered name is looked up in first)."""
    return model_dirs()[0]


def installed_path(name: str) -> Optional[Path]:
    """The file a registered name loads: the checkpoint's file in the first model folder that has it."""
    file = checkpoint(name).file
    return next((folder / file for folder in model_dirs() if (folder / file).is_file()), None)


def file_digest(path) -> "hashlib._Hash":
    """A sha256 object fed with a file's bytes (read in 4 MB blocks); more bytes can follow."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest


def file_sha256(path) -> str:
    """The sha256 of a file, as hex."""
    return file_digest(path).hexdigest()
