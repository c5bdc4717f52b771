"""The local backend's on-disk state: files, fine-tuning jobs (with events), and fine-tuned models.

Layout of the state directory (one per bot project by default)::

    files/<file-id>.json  + .data       uploaded files and result files
    jobs/<job-id>.json    + .events.jsonl + .lock
    models/<key>.json     + .npz        fine-tuned models (key = last part of the ft:... id)
    state.lock                          guards every read-modify-write of the metadata

Every file is written atomically (a reader sees the old or the new version), every read-modify-write happens under
`state.lock`, so several processes of one bot (Rasa server, action server, CLI), each with its own embedded server,
can share one directory. A job is trained by whichever process holds its `.lock` (an OS file lock, released when
that process dies, so another process picks an orphaned job up again).
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
from filelock import FileLock, Timeout

from rasa_gpt3.atomic_files import write_atomic
from rasa_gpt3.local import ids

# fields kept next to an object but never sent over the wire
PRIVATE = "_local"
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")
ACTIVE_STATUSES = ("validating_files", "queued", "running")


class StateDirError(OSError):
    """The state directory cannot be created or used."""


class NotFound(Exception):
    """The object does not exist (or its id is malformed)."""


def _now_ns() -> int:
    return time.time_ns()


def public(obj: Dict[str, Any]) -> Dict[str, Any]:
    """`obj` without the backend's private fields."""
    return {key: value for key, value in obj.items() if key != PRIVATE}


class Store:
    """Files, jobs, events and models of one state directory."""

    def __init__(self, root: os.PathLike) -> None:
        self.root = Path(root).expanduser().resolve()
        try:
            for folder in ("files", "jobs", "models"):
                (self.root / folder).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StateDirError(
                f"cannot use {self.root} as the local backend's state directory: {error.strerror or error}"
            ) from None
        self._lock = FileLock(str(self.root / "state.lock"), timeout=30)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Holds the state directory's metadata lock (reentrant within one thread)."""
        with self._lock:
            yield

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _read_json(path: Path) -> Dict[str, Any]:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise NotFound(path.name) from None

    @staticmethod
    def _write_json(path: Path, obj: Dict[str, Any]) -> None:
        write_atomic(path, json.dumps(obj, ensure_ascii=False, indent=None, separators=(",", ":")))

    def _all(self, folder: str, suffix: str = ".json") -> List[Dict[str, Any]]:
        objects = []
        for path in (self.root / folder).glob("*" + suffix):
            if path.name.endswith(".events.json"):
                continue
            try:
                objects.append(json.loads(path.read_text(encoding="utf-8")))
            except (FileNotFoundError, json.JSONDecodeError):
                continue  # deleted or replaced while we listed
        # newest first, ties broken by the nanosecond sequence
        objects.sort(key=lambda obj: obj.get(PRIVATE, {}).get("seq", 0), reverse=True)
        return objects

    # ------------------------------------------------------------------ files

    def _file_path(self, file_id: str, extension: str) -> Path:
        if not ids.is_object_id(file_id, "file"):
            raise NotFound(file_id)
        return self.root / "files" / f"{file_id}{extension}"

    def create_file(self, filename: str, purpose: str, content: bytes) -> Dict[str, Any]:
        """Stores an uploaded (or generated) file and returns its file object."""
        file_id = ids.new_id("file")
        obj = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": os.path.basename(filename or "upload")[:255] or "upload",
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
            PRIVATE: {"seq": _now_ns()},
        }
        write_atomic(self._file_path(file_id, ".data"), content)
        self._write_json(self._file_path(file_id, ".json"), obj)
        return obj

    def get_file(self, file_id: str) -> Dict[str, Any]:
        """The file object `file_id`; raises NotFound."""
        return self._read_json(self._file_path(file_id, ".json"))

    def file_content(self, file_id: str) -> bytes:
        """The bytes of file `file_id`; raises NotFound."""
        self.get_file(file_id)
        try:
            return self._file_path(file_id, ".data").read_bytes()
        except FileNotFoundError:
            raise NotFound(file_id) from None

    def list_files(self, purpose: Optional[str] = None) -> List[Dict[str, Any]]:
        """Every file, newest first, optionally only those with `purpose`."""
        files = self._all("files")
        return [f for f in files if purpose is None or f.get("purpose") == purpose]

    def delete_file(self, file_id: str) -> None:
        """Deletes file `file_id`; raises NotFound."""
        with self.locked():
            self.get_file(file_id)
            for extension in (".json", ".data"):
                try:
                    self._file_path(file_id, extension).unlink()
                except FileNotFoundError:
                    pass

    # ------------------------------------------------------------------ jobs

    def _job_path(self, job_id: str, extension: str = ".json") -> Path:
        if not ids.is_object_id(job_id, "job"):
            raise NotFound(job_id)
        return self.root / "jobs" / f"{job_id}{extension}"

    def create_job(self, job: Dict[str, Any]) -> Dict[str, Any]:
        """Stores a new job object (its id must be fresh)."""
        job.setdefault(PRIVATE, {})["seq"] = _now_ns()
        with self.locked():
            self._write_json(self._job_path(job["id"]), job)
        return job

    def get_job(self, job_id: str) -> Dict[str, Any]:
        """The job `job_id` (with private fields); raises NotFound."""
        return self._read_json(self._job_path(job_id))

    def list_jobs(self) -> List[Dict[str, Any]]:
        """Every job, newest first."""
        return self._all("jobs")

    def job_statuses(self, skip: Iterable[str] = ()) -> List[Tuple[str, str]]:
        """(job id, status) of every job not in `skip` (those are not even read), oldest first."""
        skip = set(skip)
        found = []
        for path in (self.root / "jobs").glob("ftjob-*.json"):
            if path.stem in skip:
                continue
            try:
                job = json.loads(path.read_text(encoding="utf-8"))
            except (FileNotFoundError, json.JSONDecodeError):
                continue
            found.append((job.get(PRIVATE, {}).get("seq", 0), job["id"], job.get("status", "")))
        return [(job_id, status) for _, job_id, status in sorted(found)]

    def update_job(self, job_id: str, change: Callable[[Dict[str, Any]], Optional[Dict[str, Any]]]) -> Dict[str, Any]:
        """Applies `change` (mutating the job, or returning a replacement) under the lock; returns the new job."""
        with self.locked():
            job = self.get_job(job_id)
            job = change(job) or job
            self._write_json(self._job_path(job_id), job)
            return job

    def job_lock(self, job_id: str) -> FileLock:
        """The lock whose holder trains job `job_id`."""
        return FileLock(str(self._job_path(job_id, ".lock")))

    def try_claim_job(self, job_id: str) -> Optional[FileLock]:
        """The acquired training lock of `job_id`, or None when another process (or thread) holds it."""
        lock = self.job_lock(job_id)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return None
        return lock

    # ------------------------------------------------------------------ events

    def add_events(self, job_id: str, events: List[Dict[str, Any]]) -> None:
        """Appends events (oldest first) to the job's event log."""
        if not events:
            return
        path = self._job_path(job_id, ".events.jsonl")
        with self.locked():
            try:
                existing = path.read_bytes()
            except FileNotFoundError:
                existing = b""
            lines = "".join(json.dumps(event, separators=(",", ":")) + "\n" for event in events)
            write_atomic(path, existing + lines.encode("utf-8"))

    def list_events(self, job_id: str) -> List[Dict[str, Any]]:
        """The job's events, newest first (as the API lists them)."""
        self.get_job(job_id)
        try:
            text = self._job_path(job_id, ".events.jsonl").read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        events = [json.loads(line) for line in text.splitlines() if line.strip()]
        events.reverse()
        return events

    # ------------------------------------------------------------------ models

    def _model_path(self, model_id: str, extension: str) -> Path:
        key = ids.model_key(model_id)
        if key is None:
            raise NotFound(model_id)
        return self.root / "models" / f"{key}{extension}"

    def save_model(self, meta: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> None:
        """Stores a fine-tuned model: its metadata (`meta['id']` is the ft: id) and its weight arrays."""
        import io

        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        meta.setdefault(PRIVATE, {})["seq"] = _now_ns()
        write_atomic(self._model_path(meta["id"], ".npz"), buffer.getvalue())
        self._write_json(self._model_path(meta["id"], ".json"), meta)

    def get_model(self, model_id: str) -> Dict[str, Any]:
        """The metadata of fine-tuned model `model_id`; raises NotFound."""
        meta = self._read_json(self._model_path(model_id, ".json"))
        if meta.get("id") != model_id:
            raise NotFound(model_id)
        return meta

    def model_arrays(self, model_id: str) -> Dict[str, np.ndarray]:
        """The weight arrays of fine-tuned model `model_id`; raises NotFound."""
        try:
            with np.load(self._model_path(model_id, ".npz"), allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except FileNotFoundError:
            raise NotFound(model_id) from None

    def model_version(self, model_id: str) -> Optional[int]:
        """A value that changes when the model's files change (None when it is gone)."""
        try:
            return self._model_path(model_id, ".json").stat().st_mtime_ns
        except (FileNotFoundError, NotFound):
            return None

    def list_models(self) -> List[Dict[str, Any]]:
        """Every fine-tuned model, newest first."""
        return self._all("models")

    def delete_model(self, model_id: str) -> None:
        """Deletes fine-tuned model `model_id`; raises NotFound."""
        with self.locked():
            self.get_model(model_id)
            for extension in (".json", ".npz"):
                try:
                    self._model_path(model_id, extension).unlink()
                except FileNotFoundError:
                    pass
