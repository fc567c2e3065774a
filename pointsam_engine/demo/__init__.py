"""Demo tooling: generated scenes with their truth (:mod:`.scenes`), the ``pointsam demo`` run that segments and
scores them (:mod:`.run`), and PNG previews of a run over its raster (:mod:`.preview`).

Nothing here is imported by the segmentation path; tests, benchmarks and ``training`` use the scenes too.
"""

DEMO_FOLDER = "pointsam-demo"  # where ``pointsam demo`` leaves its files unless told (--out)
