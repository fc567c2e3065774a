"""HTTP client of the engine's local API (``pointsam serve``), standard library only.

Imports nothing from qgis, so it is tested outside QGIS too. Every engine error becomes
:class:`EngineRequestError` with the engine's one-line message; a refused connection becomes
:class:`EngineUnavailableError`.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Optional

from .errors import EngineRequestError, EngineUnavailableError, JobFailedError

FINISHED = ("succeeded", "failed", "cancelled")


class EngineClient:
    """Calls ``/v1`` routes of an engine at ``url`` with its bearer ``token``.

    ``hint`` ends the message when the engine does not answer: what the user can do about it;
    ``on_unavailable`` runs before that message is raised (the owner of the engine keeps its log there).
    """

    def __init__(self, url: str, token: str, timeout: float = 120.0, hint: str = "it restarts on the next run",
                 on_unavailable: Callable[[], None] = lambda: None):
        self.url, self.token, self.timeout, self.hint = url.rstrip("/"), token, timeout, hint
        self.on_unavailable = on_unavailable

    def request(self, method: str, path: str, body: Optional[dict] = None, timeout: Optional[float] = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise _request_error(exc) from None
        except (urllib.error.URLError, ConnectionError, socket.timeout) as exc:
            reason = getattr(exc, "reason", exc)
            self.on_unavailable()
            raise EngineUnavailableError(f"the PointSAM engine at {self.url} does not answer ({reason}); "
                                         f"{self.hint}") from None

    def health(self, timeout: float = 5.0) -> dict:
        return self.request("GET", "/v1/health", timeout=timeout)

    def models(self) -> dict:
        return self.request("GET", "/v1/models")

    def predict(self, **body) -> dict:
        return self.request("POST", "/v1/predict", body)

    def prefetch(self, **body) -> dict:
        return self.request("POST", "/v1/prefetch", body)

    def evaluate(self, **body) -> dict:
        return self.request("POST", "/v1/evaluate", body)

    def submit(self, kind: str, **body) -> dict:
        return self.request("POST", f"/v1/jobs/{kind}", body)

    def pull(self, name: str) -> dict:
        """Start downloading the official checkpoint ``name`` (vit_b ... vit_h, SAM 2.1's hiera_t ... hiera_l): a job to
        :meth:`follow`."""
        return self.submit("pull", name=name)

    def verify_model(self, name: str) -> dict:
        """``{"name", "path", "sha256", "ok"}`` of the installed checkpoint ``name`` (hashes it: seconds per GB)."""
        return self.request("POST", "/v1/models/verify", {"name": name})

    def remove_model(self, name: str) -> dict:
        """Delete the installed checkpoint ``name``: ``{"name", "removed"}``."""
        return self.request("DELETE", f"/v1/models/{urllib.parse.quote(name, safe='')}")

    def job(self, job_id: str) -> dict:
        return self.request("GET", f"/v1/jobs/{job_id}")

    def cancel(self, job_id: str) -> dict:
        return self.request("DELETE", f"/v1/jobs/{job_id}")

    def follow(self, job: dict, progress: Callable[[float, str], None], is_cancelled: Callable[[], bool],
               poll: float = 0.2) -> dict:
        """Poll a job until it ends, reporting progress and every step it went through, those it passed between two
        polls too; cancels it when ``is_cancelled()``. Returns its result."""
        cancel_sent, reported = False, len(job.get("stages", ())) - 1
        while job["state"] not in FINISHED:
            if is_cancelled() and not cancel_sent:
                job, cancel_sent = self.cancel(job["id"]), True
                continue
            time.sleep(poll)
            job = self.job(job["id"])
            for stage in job.get("stages", [])[reported + 1:]:
                if stage != job["stage"]:
                    progress(job["progress"], stage)
            reported = max(len(job.get("stages", ())) - 1, 0)
            progress(job["progress"], job["stage"])
        if job["state"] != "succeeded":
            raise JobFailedError(job["message"] or f"the engine job {job['state']}")
        return job["result"]


def _request_error(exc: urllib.error.HTTPError) -> EngineRequestError:
    try:
        body = json.loads(exc.read() or b"{}")
    except ValueError:
        body = {}
    message = body.get("message") or f"the engine answered HTTP {exc.code}"
    return EngineRequestError(message, body.get("error", ""), exc.code)
