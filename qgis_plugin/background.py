"""Work off QGIS's GUI thread: engine start, model lists, downloads, clicks and jobs run as QgsTasks.

:func:`in_background` is the one way the plugin calls the engine from the GUI: ``work(task)`` runs on a
worker thread (it may call ``task.setProgress`` and poll ``task.isCanceled()``), and ``done(task)`` runs
back on the GUI thread with ``task.value`` or ``task.error`` (one line) set. The GUI never waits.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Set

from qgis.core import QgsApplication, QgsTask

from .errors import PluginError

_running: Set["BackgroundCall"] = set()  # Python owns the task objects until they finish


class BackgroundCall(QgsTask):
    """One call on a worker thread; never raises in ``run()`` (QGIS's rule), reports in ``done``."""

    def __init__(self, description: str, work: Callable[["BackgroundCall"], Any],
                 done: Callable[["BackgroundCall"], None], can_cancel: bool = True):
        flags = QgsTask.Flag.CanCancel if can_cancel else QgsTask.Flag(0)
        super().__init__(description, flags)
        self.work, self.done = work, done
        self.value: Any = None
        self.error: Optional[str] = None
        self.stage = ""

    def run(self) -> bool:
        try:
            self.value = self.work(self)
            return True
        except PluginError as exc:
            self.error = str(exc)
        except Exception as exc:  # a bug must still reach the user as one line, not kill QGIS's worker
            self.error = f"{type(exc).__name__}: {exc}"
        return False

    def finished(self, ok: bool) -> None:
        _running.discard(self)
        if not ok and self.error is None:
            self.error = "cancelled"
        self.done(self)


def in_background(description: str, work: Callable[[BackgroundCall], Any],
                  done: Callable[[BackgroundCall], None], can_cancel: bool = True) -> BackgroundCall:
    """Start ``work`` on QGIS's task manager; ``done`` gets the finished task on the GUI thread."""
    task = BackgroundCall(description, work, done, can_cancel)
    _running.add(task)
    QgsApplication.taskManager().addTask(task)
    return task


def pending() -> int:
    """Background calls started and not yet finished (tests wait for zero)."""
    return len(_running)


def cancel_all(timeout: float = 60.0) -> int:
    """Cancel every background call that can be cancelled and wait (processing events, so their ``done`` runs)
    until all have finished or ``timeout`` seconds passed; the plugin's unload calls it before it stops the engine.
    Returns how many were still running."""
    import time

    for task in list(_running):
        if task.canCancel():  # the others (stopping an engine) must run, or they leave it running unowned
            task.cancel()
    deadline = time.monotonic() + timeout
    while _running and time.monotonic() < deadline:
        QgsApplication.processEvents()
        time.sleep(0.02)
    return len(_running)
