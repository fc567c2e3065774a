"""``pointsam batch``: one point layer over many rasters on Dask distributed, resumable, one merged result.

:mod:`.sources` expands ``--rasters``; :mod:`.assign` gives every object one raster and cuts the tasks;
:mod:`.tasks` runs one on a worker (the model loaded once per worker); :mod:`.cluster` runs them on Dask;
:mod:`.merge` makes the one GeoPackage; :mod:`.run` holds :func:`batch_segment`, which does it all.
"""

from .run import BatchResult, batch_segment, check_batch_inputs, work_folder

__all__ = ["BatchResult", "batch_segment", "check_batch_inputs", "work_folder"]
