"""What the server keeps between requests (:class:`Engine`), and the dependency that hands it to routes.

Routes take the engine as ``engine: EngineDep``; :func:`create_app <pointsam_engine.api.app.create_app>` puts
it on ``app.state``, and a test swaps it with ``app.dependency_overrides[get_engine] = lambda: stub``.
"""

from __future__ import annotations

import threading
from typing import Annotated, Optional, Sequence

from fastapi import Depends, Request

from ..config import SERVE_MAX_PARALLEL, SegmentConfig
from ..jobs import JobRunner


class Engine:
    """What the server keeps between requests: the loaded models, their embedding cache, the click path and
    the jobs. ``adapter_dirs`` are folders, besides the model folders, whose adapters ``/v1/models`` lists."""

    def __init__(self, config: SegmentConfig, model=None, adapter_dirs: Sequence[str] = (),
                 max_parallel: int = SERVE_MAX_PARALLEL, output_root: Optional[str] = None):
        from ..interactive import ClickSegmenter
        from ..sam.cache import EmbeddingCache
        from .models import ModelPool

        self.config, self.adapter_dirs, self.output_root = config, tuple(adapter_dirs), output_root
        # clicks that may run the encoder at once; the rest wait their turn (each pass holds hundreds of MB)
        self.click_slots = threading.BoundedSemaphore(max_parallel)
        self.models = ModelPool(config, model)
        self.cache = EmbeddingCache(config.cache_mb, config.cache_dir)  # keys name the model: shared safely
        self.clicks = ClickSegmenter(self.predictor(), config)
        self.jobs = JobRunner()

    @property
    def model(self):
        """The model the server was started with (requests that name no model use it)."""
        return self.models.default

    def predictor(self, model=None):
        """A predictor of its own (one chip at a time) that shares ``model``'s weights (default: the server's)
        and the embedding cache."""
        from ..sam.predict import ChipPredictor

        return ChipPredictor(model or self.model, self.cache, self.config.decoder_batch)

    def check_output(self, path, option: str = "output") -> None:
        """Refuse a job's output outside ``--output-root`` (when the server was given one)."""
        if self.output_root is not None:
            from ..output import check_inside

            check_inside(path, self.output_root, option)

    def close(self) -> None:
        """Cancel the running jobs and stop the job thread."""
        self.jobs.shutdown()


def get_engine(request: Request) -> Engine:
    """The app's engine (``app.state.engine``): the dependency every route takes it through."""
    return request.app.state.engine


EngineDep = Annotated[Engine, Depends(get_engine)]
"""A route parameter ``engine: EngineDep`` receives the engine (or a test's override)."""
