"""Background jobs for the HTTP API: run off the request thread, one at a time, with progress and cancel.

A job is a function ``work(progress, cancel) -> result``: ``progress(fraction, stage)`` reports,
``cancel`` is a ``threading.Event`` the work checks (the pipeline raises
:class:`~pointsam_engine.errors.Cancelled` and, writing atomically, leaves no partial output).
Jobs run in submission order on one worker thread: they share one loaded model and a 2-core
machine gains nothing from running two encoders at once.
"""

from __future__ import annotations

import queue
import re
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from .errors import Cancelled, PointSamError

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINISHED = (SUCCEEDED, FAILED, CANCELLED)

Work = Callable[[Callable[[float, str], None], threading.Event], dict]
COUNT = re.compile(r"\d[\d.,]*")


def step_of(stage: str) -> str:
    """The step a stage belongs to: its text with counts blanked ("encoding chip 3/40" and "... 4/40" are one)."""
    return COUNT.sub("#", stage)


class CancelToken(threading.Event):
    """A job's cancel flag, honoured until the job commits its output (the final rename).

    The work calls :meth:`commit` just before it changes the output: a cancel asked before then stops the
    job there (nothing written); one asked after is refused (:meth:`request` returns False)."""

    def __init__(self):
        super().__init__()
        self._lock = threading.Lock()
        self.committed = False

    def request(self) -> bool:
        """Ask to cancel; False when the job has already begun to write its output."""
        with self._lock:
            if self.committed:
                return False
            self.set()
            return True

    def commit(self) -> None:
        with self._lock:
            if self.is_set():
                raise Cancelled("the run was cancelled; nothing was written")
            self.committed = True


class TooLateToCancel(PointSamError):
    """The job is already writing its output; it finishes."""


@dataclass
class Job:
    id: str
    kind: str
    work: Work
    state: str = QUEUED
    progress: float = 0.0
    stage: str = "queued"
    steps: Dict[str, str] = field(default_factory=lambda: {"queued": "queued"})
    message: str = ""
    result: Optional[dict] = None
    error: Optional[dict] = None
    created: float = field(default_factory=time.time)
    finished: Optional[float] = None
    cancel: CancelToken = field(default_factory=CancelToken)

    def to_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "state": self.state, "progress": round(self.progress, 4),
                "stage": self.stage, "stages": list(self.steps.values()), "message": self.message, "result": self.result,
                "error": self.error, "created": self.created, "finished": self.finished}

    def enter(self, stage: str) -> None:
        """Make ``stage`` the job's stage. ``stages`` lists each step once, in the order first entered, with its latest
        count, so a client that polls after a short job has ended can still say what it did, and a long job's list
        stays as short as its kinds of step. The stage is set first: a poll in between sees no step before it."""
        self.stage = stage
        self.steps[step_of(stage)] = stage


class JobRunner:
    """Queue of jobs and the one thread that runs them."""

    def __init__(self):
        self._jobs: Dict[str, Job] = {}
        self._queue: "queue.Queue[Optional[Job]]" = queue.Queue()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="pointsam-jobs", daemon=True)
        self._thread.start()

    def submit(self, kind: str, work: Work) -> Job:
        job = Job(uuid.uuid4().hex, kind, work)
        with self._lock:
            self._jobs[job.id] = job
        self._queue.put(job)
        return job

    def get(self, job_id: str) -> Optional[Job]:
        with self._lock:
            return self._jobs.get(job_id)

    def list(self) -> List[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.created)

    def cancel(self, job_id: str) -> Optional[Job]:
        """Ask a job to stop; a queued job is cancelled at once, a running one at its next check. Raises
        :class:`TooLateToCancel` when the job is already writing its output (it will succeed)."""
        job = self.get(job_id)
        if job is None:
            return None
        if job.state in FINISHED:
            return job
        if not job.cancel.request():
            raise TooLateToCancel(f"job {job_id} is already writing its output and cannot be cancelled; "
                                  "it finishes in a moment (delete the output afterwards if it is unwanted)")
        with self._lock:
            if job.state == QUEUED:
                self._finish(job, CANCELLED, stage="cancelled", message="cancelled before it started")
        return job

    def shutdown(self, timeout: float = 30.0) -> None:
        """Cancel every job and wait for the running one to stop."""
        for job in self.list():
            job.cancel.request()
            with self._lock:
                if job.state == QUEUED:
                    self._finish(job, CANCELLED, stage="cancelled", message="cancelled before it started")
        self._queue.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                if job.state != QUEUED:
                    continue
                job.state = RUNNING
                job.enter("starting")
            self._run(job)

    def _run(self, job: Job) -> None:
        def progress(fraction: float, stage: str) -> None:
            job.progress = max(job.progress, min(float(fraction), 1.0))
            job.enter(stage)

        try:
            result = job.work(progress, job.cancel)
        except Cancelled as exc:
            self._finish(job, CANCELLED, stage="cancelled", message=str(exc))
        except PointSamError as exc:
            self._finish(job, FAILED, stage="failed", message=str(exc), error={"error": type(exc).__name__, "message": str(exc)})
        except Exception as exc:  # a bug: keep the traceback for the report
            detail = traceback.format_exc(limit=8)
            self._finish(job, FAILED, stage="failed", message=f"internal error: {exc!r}",
                         error={"error": "InternalError", "message": f"{exc!r}", "traceback": detail})
        else:
            job.result, job.progress = result, 1.0
            self._finish(job, SUCCEEDED, stage="done", message="done")

    def _finish(self, job: Job, state: str, *, stage: str, message: str, error: Optional[dict] = None) -> None:
        job.enter(stage)
        job.state, job.message, job.error, job.finished = state, message, error, time.time()
