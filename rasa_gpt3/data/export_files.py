"""Writing an export to disk: each task's directory changes as a whole, and bad output paths are one-line errors.

A task's files (train.jsonl, valid.jsonl, labels.json, manifest.json) are written into a temporary sibling of
`--out/<task>/` that then takes its place (`atomic_files.replacing_directory`), so a reader, or an export killed
half-way, never leaves new training data next to an old manifest. Other files a user keeps in the task directory
are carried over into the new one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from rasa_gpt3.atomic_files import replacing_directory, write_atomic
from rasa_gpt3.data.exported_task import ExportedTask
from rasa_gpt3.errors import DataError

EXPORT_FILES = ("train.jsonl", "valid.jsonl", "labels.json", "manifest.json")


def check_output_dir(out_dir: Union[str, Path], tasks: Iterable[str]) -> None:
    """Raises DataError when `out_dir` cannot hold the tasks' directories, before any work is done.

    It catches the usual mistakes (a file named as --out or where a task directory goes, a parent that is a file
    or not writable); whatever else the file system refuses is reported when the files are written.
    """
    out = Path(out_dir)
    existing = next((p for p in (out, *out.parents) if os.path.lexists(p)), None)
    if existing == out and not out.is_dir():
        raise DataError(f"--out {out} is a file, not a directory (name a directory to write the export into)")
    if existing is not None and existing != out and not existing.is_dir():
        raise DataError(f"cannot create --out {out}: {existing} is a file, not a directory")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"cannot write into {existing}: permission denied (choose another --out)")
    for task in tasks:
        task_dir = out / task
        if os.path.lexists(task_dir) and not task_dir.is_dir():
            raise DataError(
                f"{task_dir} is a file, but the {task} export goes into a directory of that name "
                "(move the file or choose another --out)"
            )


def write_export(exported: ExportedTask, out_dir: Union[str, Path], command: Optional[str] = None) -> Path:
    """Writes train.jsonl, valid.jsonl, labels.json (intent task) and manifest.json as out_dir/<task>/, as a whole.

    Raises DataError when the directory cannot be written; the old directory is then left as it was.
    """
    task_dir = Path(out_dir) / exported.task
    check_output_dir(out_dir, [exported.task])
    manifest = dict(exported.manifest)
    manifest["command"] = command
    try:
        with replacing_directory(task_dir) as staging:
            _carry_over_other_files(task_dir, staging)
            write_atomic(staging / "train.jsonl", exported.jsonl("train"))
            write_atomic(staging / "valid.jsonl", exported.jsonl("valid"))
            if exported.codec is not None:
                write_atomic(staging / "labels.json", json_text(exported.codec.to_json()))
            write_atomic(staging / "manifest.json", json_text(manifest))
    except OSError as error:
        reason = error.strerror or str(error)
        if error.filename and str(error.filename) != str(task_dir):
            reason += f" ({error.filename})"
        raise DataError(f"cannot write the {exported.task} export to {task_dir}: {reason}") from None
    return task_dir


def _carry_over_other_files(task_dir: Path, staging: Path) -> None:
    """Copies what the user keeps in the old task directory (not the export's files) into the new one."""
    if not task_dir.is_dir():
        return
    for entry in os.scandir(task_dir):
        if entry.name in EXPORT_FILES or _is_unfinished_write(entry.name):
            continue
        target = staging / entry.name
        if entry.is_dir(follow_symlinks=False):
            shutil.copytree(entry.path, target, symlinks=True)
        elif entry.is_symlink():
            os.symlink(os.readlink(entry.path), target)
        else:
            shutil.copy2(entry.path, target)


def _is_unfinished_write(name: str) -> bool:
    """A temporary file `write_atomic` left when an older export was killed (`.train.jsonl.x1y2.tmp`)."""
    return name.endswith(".tmp") and any(name.startswith(f".{known}.") for known in EXPORT_FILES)


def json_text(data: Any) -> str:
    """Indented JSON with a final newline, UTF-8 as is (labels.json, manifest.json)."""
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"
