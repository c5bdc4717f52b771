"""Atomic writes: a reader sees the old file or directory or the new one, never half of one.

`write_atomic` replaces one file through a temporary sibling and a rename. `replacing_directory` replaces a whole
directory: the caller fills a temporary sibling, which then takes the old directory's place in one step (Linux's
renameat2 exchange; elsewhere the old one is renamed aside first). Temporary siblings carry the writer's process id,
so the next writer can tell an abandoned one (its process is gone) from one still being written, and removes it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterator, List, Optional, Union


def write_atomic(path: Union[str, os.PathLike], data: Union[str, bytes]) -> Path:
    """Writes `data` to `path` through a temporary file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; keep the mode of the file we replace, else the usual 0644
        os.chmod(temporary, path.stat().st_mode & 0o7777 if path.exists() else 0o644)
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    return path


# ---------------------------------------------------------------- replacing a whole directory

_NEW, _OLD = ".new", ".old"


@contextlib.contextmanager
def replacing_directory(path: Union[str, os.PathLike]) -> Iterator[Path]:
    """Yields an empty temporary sibling of `path` to fill; when the block ends normally it replaces `path` whole.

    If the block raises, or SIGTERM or Ctrl-C arrives before the swap, `path` keeps its old content and the sibling is
    removed (SIGTERM is then re-sent with its default action, so the process still ends as it was told to). A process
    killed outright (SIGKILL) leaves a sibling that the next call for `path` removes.
    """
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()  # replace the directory the link points to, not the link
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
    with _SignalGuard() as guard:
        remove_abandoned_siblings(path)
        staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=_sibling_prefix(path), suffix=_NEW))
        try:
            # mkdtemp creates 0700; keep the mode of the directory we replace, else the usual 0755
            os.chmod(staging, path.stat().st_mode & 0o7777 if path.exists() else 0o755)
            yield staging
            _fsync_directory(staging)
            with guard.deferred():
                _swap_in(staging, path)
                _fsync_directory(path.parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def remove_abandoned_siblings(path: Union[str, os.PathLike]) -> List[Path]:
    """Removes the temporary siblings of `path` that dead processes left, restoring `path` from one if it is missing.

    A writer killed between renaming the old directory aside and renaming the new one in leaves no `path`; the old
    directory it set aside is complete, so it goes back. Returns what was removed.
    """
    path = Path(path)
    mine = [sibling for sibling in _siblings(path) if not _process_alive(_writer_pid(path, sibling))]
    if not os.path.lexists(path):
        # an empty one may be a set-aside directory made just before the rename that would have filled it
        aside = sorted((s for s in mine if s.name.endswith(_OLD)), key=lambda s: not os.listdir(s))
        if aside:
            os.rename(aside[0], path)
            mine.remove(aside[0])
    for sibling in mine:
        shutil.rmtree(sibling, ignore_errors=True)
    return mine


def _sibling_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _siblings(path: Path) -> List[Path]:
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return []
    return [path.parent / name for name in sorted(names) if _writer_pid(path, path.parent / name)]


def _writer_pid(path: Path, sibling: Path) -> int:
    """The process id in the name of a temporary sibling of `path` (`.NAME.PID.RANDOM.new|old`), else 0."""
    found = re.fullmatch(re.escape(f".{path.name}.") + r"(\d+)\.[^.]+(?:\.new|\.old)", sibling.name)
    return int(found.group(1)) if found else 0


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process holds none between calls: a sibling with its id is from a dead namesake
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _swap_in(staging: Path, path: Path) -> None:
    """Puts `staging` at `path`; an existing `path` is exchanged in one step where the OS can, else set aside."""
    if not os.path.lexists(path):
        os.rename(staging, path)
        return
    if _exchange(staging, path):
        shutil.rmtree(staging, ignore_errors=True)  # now holds the old directory
        return
    rename_aside_and_in(staging, path)


def rename_aside_and_in(staging: Path, path: Path) -> None:
    """Replaces the directory `path` with `staging` in two renames (old aside, new in), then deletes the old one."""
    aside = Path(tempfile.mkdtemp(dir=path.parent, prefix=_sibling_prefix(path), suffix=_OLD))
    os.rename(path, aside)  # onto the empty directory mkdtemp made, atomically
    try:
        os.rename(staging, path)
    except BaseException:
        os.rename(aside, path)
        raise
    shutil.rmtree(aside, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(first: Path, second: Path) -> bool:
    """Swaps two paths atomically with Linux's renameat2; False where that is not available."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError, TypeError):  # no such call in this C library, or no C library to ask
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # an old kernel or a file system without exchange
    raise OSError(code, os.strerror(code), str(second))


def _fsync_directory(path: Path) -> None:
    """Makes the directory's entries durable (the renames in it), where the OS lets a directory be opened."""
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(handle)


class Terminated(BaseException):
    """SIGTERM arrived while a directory was being replaced; raised to clean up, then the signal is re-sent."""


class _SignalGuard:
    """Turns SIGTERM into `Terminated` (so temporary files are removed) and holds SIGTERM and Ctrl-C during a swap.

    Only in the main thread and only where SIGTERM still has its default action: a host application's own
    handler is left alone.
    """

    def __init__(self) -> None:
        self._previous: Optional[object] = None
        self._holding = False
        self._pending: List[int] = []

    def __enter__(self) -> _SignalGuard:
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: object) -> None:
        if self._holding or self._pending:
            self._pending.append(signum)  # mid-swap, or already cleaning up after the first signal
            return
        self._pending.append(signum)
        raise Terminated(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Holds SIGTERM (and Ctrl-C, when Python's default handler is in place) until the block has finished."""
        previous_int = None
        if self._previous is not None and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            previous_int = signal.signal(signal.SIGINT, self._on_signal)
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
            if previous_int is not None:
                signal.signal(signal.SIGINT, previous_int)
        if signal.SIGINT in self._pending and signal.SIGTERM not in self._pending:
            self._pending.clear()
            raise KeyboardInterrupt

    def __exit__(self, *exc_info: object) -> None:
        if self._previous is None:
            return
        signal.signal(signal.SIGTERM, self._previous)
        if signal.SIGTERM in self._pending:
            os.kill(os.getpid(), signal.SIGTERM)  # the default action now that the directory is whole
