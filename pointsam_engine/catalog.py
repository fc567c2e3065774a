"""The official segment-anything and SAM 2.1 checkpoints and the folders registered models live in.

One table, :data:`CATALOG`: name, file, size and sha256 of each checkpoint Meta published with
segment-anything (https://github.com/facebookresearch/segment-anything#model-checkpoints) and with SAM 2.1
(https://github.com/facebookresearch/sam2#model-description, the 2024-09-28 files). Names (``vit_b``,
``hiera_t`` ...) refer to these files wherever a model is asked for; :mod:`pointsam_engine.download` fetches
and checks them. Standard library only, so listing models never imports torch.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from .errors import ModelError

OFFICIAL_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything"
SAM2_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"
BASE_URL_VARIABLE = "POINTSAM_MODEL_BASE_URL"  # another server holding the same files (a mirror; tests)


@dataclass(frozen=True)
class Checkpoint:
    """One official checkpoint: the name it is asked for by, its file, and what the file must be."""

    name: str
    file: str
    size: int  # bytes
    sha256: str
    official_base: str = OFFICIAL_BASE_URL
    family: str = "SAM"  # or "SAM 2.1" (needs the sam2 extra: pip install -e ".[sam2]")

    @property
    def official_url(self) -> str:
        return f"{self.official_base}/{self.file}"

    @property
    def url(self) -> str:
        """Where :func:`~pointsam_engine.download.pull` fetches it: ``$POINTSAM_MODEL_BASE_URL`` or the official URL."""
        base = os.environ.get(BASE_URL_VARIABLE, "").strip() or self.official_base
        return f"{base.rstrip('/')}/{self.file}"


# sizes and sha256 as published files hash; the model type is also read from the weights (model.py). SAM 2.1's
# sha256: Meta's own copies on Hugging Face (facebook/sam2.1-hiera-*, their Git LFS sha256 and size), the same
# values that projects verifying the dl.fbaipublicfiles.com files record
CATALOG: Dict[str, Checkpoint] = {c.name: c for c in (
    Checkpoint("vit_b", "sam_vit_b_01ec64.pth", 375_042_383,
               "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
    Checkpoint("vit_l", "sam_vit_l_0b3195.pth", 1_249_524_607,
               "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
    Checkpoint("vit_h", "sam_vit_h_4b8939.pth", 2_564_550_879,
               "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
    Checkpoint("hiera_t", "sam2.1_hiera_tiny.pt", 156_008_466,
               "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69", SAM2_BASE_URL, "SAM 2.1"),
    Checkpoint("hiera_s", "sam2.1_hiera_small.pt", 184_416_285,
               "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38", SAM2_BASE_URL, "SAM 2.1"),
    Checkpoint("hiera_b+", "sam2.1_hiera_base_plus.pt", 323_606_802,
               "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5", SAM2_BASE_URL, "SAM 2.1"),
    Checkpoint("hiera_l", "sam2.1_hiera_large.pt", 898_083_611,
               "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318", SAM2_BASE_URL, "SAM 2.1"),
)}


def checkpoint(name: str) -> Checkpoint:
    """The catalogue entry for ``name`` (``vit_b``, also ``sam_vit_b``; ``hiera_t``, also ``sam2.1_hiera_t``); one
    line naming the valid names if none."""
    entry = CATALOG.get(str(name).removeprefix("sam2.1_").removeprefix("sam_"))
    if entry is None:
        raise ModelError(f"{name!r} is not an official SAM or SAM 2.1 checkpoint; use one of {', '.join(CATALOG)}")
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
