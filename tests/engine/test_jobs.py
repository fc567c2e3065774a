"""JobRunner: one worker runs jobs in order, reports progress, honours cancel until the job commits."""

from __future__ import annotations

import threading
import time

import pytest

from pointsam_engine.errors import OutputError
from pointsam_engine.jobs import CANCELLED, FAILED, QUEUED, SUCCEEDED, JobRunner, TooLateToCancel
from tests.conftest import Concurrency, work_until_cancelled


@pytest.fixture
def runner():
    jobs = JobRunner()
    yield jobs
    jobs.shutdown(5)


def _wait(job, states=(SUCCEEDED, FAILED, CANCELLED), timeout=10.0):
    deadline = time.monotonic() + timeout
    while job.state not in states and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job.state in states, job.state
    return job


def test_progress_is_reported_never_goes_back_and_ends_at_one(runner):
    seen, step = [], threading.Event()

    def work(progress, cancel):
        progress(0.5, "encoding")
        step.wait(10)
        progress(0.3, "late")  # a smaller fraction does not move the bar back
        return {"n": 3}

    job = runner.submit("segment", work)
    deadline = time.monotonic() + 10
    while job.progress < 0.5 and time.monotonic() < deadline:
        time.sleep(0.01)
    seen.append((job.state, job.progress, job.stage))
    step.set()
    _wait(job)
    assert seen == [("running", 0.5, "encoding")]
    assert (job.state, job.progress, job.result, job.stage) == (SUCCEEDED, 1.0, {"n": 3}, "done")
    assert job.to_dict()["progress"] == 1.0 and job.finished >= job.created


def test_a_job_lists_each_step_once_in_order_with_its_latest_count(runner):
    def work(progress, cancel):
        progress(0.1, "reading")
        for chip in (1, 2, 10):
            progress(0.1 * chip, f"encoding chip {chip}/10")
            progress(0.1 * chip, f"chip {chip}/10")
        progress(0.9, "chip 10/10 traced")  # the same count, another step
        return {}

    job = _wait(runner.submit("segment", work))
    assert job.to_dict()["stages"] == ["queued", "starting", "reading", "encoding chip 10/10", "chip 10/10",
                                       "chip 10/10 traced", "done"]


def test_one_worker_runs_the_jobs_one_at_a_time_in_submission_order(runner):
    meter, order = Concurrency(), []

    def work_of(name):
        def work(progress, cancel):
            with meter:
                time.sleep(0.02)
                order.append(name)
            return {}
        return work

    jobs = [runner.submit("segment", work_of(i)) for i in range(5)]
    for job in jobs:
        _wait(job)
    assert meter.peak == 1 and order == list(range(5))
    assert [j.id for j in runner.list()] == [j.id for j in jobs]


def test_a_queued_job_is_cancelled_at_once_and_never_runs(runner):
    release, ran = threading.Event(), []
    first = runner.submit("segment", lambda progress, cancel: release.wait(10) and {})
    second = runner.submit("segment", lambda progress, cancel: ran.append(True) or {})
    assert second.state == QUEUED
    assert runner.cancel(second.id) is second and second.state == CANCELLED
    assert second.message == "cancelled before it started"
    release.set()
    _wait(first)
    time.sleep(0.05)
    assert first.state == SUCCEEDED and ran == [] and second.state == CANCELLED


def test_a_running_job_stops_at_its_next_check(runner):
    work, started = work_until_cancelled()
    job = runner.submit("segment", work)
    assert started.wait(10)
    runner.cancel(job.id)
    _wait(job)
    assert job.state == CANCELLED and job.stage == "cancelled" and "nothing was written" in job.message


def test_a_cancel_before_the_commit_stops_the_job_at_the_commit(runner):
    asked, reached = threading.Event(), []

    def work(progress, cancel):
        asked.wait(10)
        cancel.commit()
        reached.append("wrote")
        return {}

    job = runner.submit("segment", work)
    _wait(job, states=("running",))
    runner.cancel(job.id)
    asked.set()
    _wait(job)
    assert job.state == CANCELLED and reached == []


def test_a_cancel_after_the_commit_is_refused_and_the_job_succeeds(runner):
    committed, release = threading.Event(), threading.Event()

    def work(progress, cancel):
        cancel.commit()
        committed.set()
        release.wait(10)
        return {"written": True}

    job = runner.submit("segment", work)
    assert committed.wait(10)
    with pytest.raises(TooLateToCancel, match="already writing its output"):
        runner.cancel(job.id)
    release.set()
    assert _wait(job).state == SUCCEEDED


def test_an_engine_error_fails_the_job_with_its_line_and_a_bug_keeps_its_traceback(runner):
    def refused(progress, cancel):
        raise OutputError("output x.gpkg exists; pass --overwrite")

    def bug(progress, cancel):
        return {}["missing"]

    failed, broken = _wait(runner.submit("segment", refused)), _wait(runner.submit("segment", bug))
    assert failed.state == FAILED and failed.error == {"error": "OutputError",
                                                       "message": "output x.gpkg exists; pass --overwrite"}
    assert broken.state == FAILED and broken.error["error"] == "InternalError"
    assert "KeyError" in broken.error["traceback"] and broken.message.startswith("internal error")


def test_cancelling_an_unknown_or_finished_job_changes_nothing(runner):
    assert runner.cancel("no-such-job") is None
    done = _wait(runner.submit("segment", lambda progress, cancel: {"ok": 1}))
    assert runner.cancel(done.id) is done and done.state == SUCCEEDED
