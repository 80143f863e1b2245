"""Pulls run by the admin API (`POST /admin/models/pull`) as jobs whose progress can be read.

A pull can take minutes (a 500 MB Citrinet), longer than any HTTP request should stay open, so the
request starts a job on a thread and answers 202 with its id; ``GET /admin/models/pull/{id}``
reads it. A second request for the same source while one runs joins that job instead of
downloading twice. Finished jobs are kept (the newest ``_KEPT`` of them) so their outcome can be read.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

from service.errors import public_message

_KEPT = 64
log = logging.getLogger(__name__)


@dataclass
class PullJob:
    id: str
    source: str
    name: str | None
    activate: bool
    state: str = "running"
    """running, done or failed."""
    bytes_done: int = 0
    bytes_total: int | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    published: str | None = None
    reused: bool = False
    error: dict | None = None

    def describe(self) -> dict:
        return {"id": self.id, "source": self.source, "name": self.name, "activate": self.activate,
                "state": self.state, "bytes_done": self.bytes_done, "bytes_total": self.bytes_total,
                "started_at": self.started_at, "finished_at": self.finished_at, "published": self.published,
                "reused": self.reused, "error": self.error}


class PullJobs:
    """The jobs of one server; ``run`` is the pull itself (interop.pull.pull_model with the registry bound)."""

    def __init__(self, run) -> None:
        self._run = run
        self._jobs: OrderedDict[str, PullJob] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, source: str, name: str | None, activate: bool) -> tuple[PullJob, bool]:
        """The job pulling ``source`` (joined if one runs), and whether this call started it."""
        with self._lock:
            for job in self._jobs.values():
                if job.state == "running" and job.source == source and job.name == name:
                    job.activate = job.activate or activate
                    return job, False
            job = PullJob(uuid.uuid4().hex[:16], source, name, activate)
            self._jobs[job.id] = job
            while len(self._jobs) > _KEPT:
                oldest = next(iter(self._jobs))
                if self._jobs[oldest].state == "running":
                    break
                del self._jobs[oldest]
        threading.Thread(target=self._work, args=(job,), name=f"pull-{job.id}", daemon=True).start()
        return job, True

    def get(self, job_id: str) -> PullJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def _work(self, job: PullJob) -> None:
        from service.http_errors import known_error

        def progress(done: int, total: int | None) -> None:
            job.bytes_done, job.bytes_total = done, total

        try:
            pulled = self._run(job.source, name=job.name, activate=job.activate, progress=progress)
            job.published, job.reused = str(pulled.ref), pulled.reused
            job.bytes_done = job.bytes_total = pulled.fetched.size_bytes
            job.state = "done"
        except Exception as exc:  # noqa: BLE001 - a job must end, and say why, whatever happened
            # Read as a response to the pull would be (service.http_errors): the request's fault (400/404), the
            # hub's (502/503), the server's own disk (507), or a bug (500, its text kept to the log).
            known = known_error(exc)
            status, type_, code = known or (500, "server_error", "internal")
            job.error = {"status": status, "type": type_, "code": code,
                         "message": public_message(exc) if known else "internal error; see the server log"}
            job.state = "failed"
            if not known:
                log.exception("pull job %s failed", job.id, exc_info=exc)
        finally:
            job.finished_at = time.time()
