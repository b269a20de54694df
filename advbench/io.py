"""Crash-safe file writes and out-of-space detection, shared by the cache, run folders and reports."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

from advbench.errors import CacheError

__all__ = ["DiskFullError", "atomic_write_text", "is_disk_full"]

#: errno values meaning "no room left": the disk is full, or the user's quota is used up
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskFullError(CacheError, OSError):
    """The disk under the cache (or a run folder) has no room left.

    Both an :class:`~advbench.errors.AdvbenchError` (the CLI prints it without a traceback) and an
    :class:`OSError` with ``errno`` ENOSPC (code that handles I/O errors keeps working).
    """

    def __init__(self, message: str, *, path: str | Path = "", nbytes: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC
        self.strerror = message
        self.path, self.nbytes = str(path), nbytes

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (worker processes)
        return (_rebuild_disk_full, (self.strerror, self.path, self.nbytes))


def _rebuild_disk_full(message: str, path: str, nbytes: int | None) -> DiskFullError:
    return DiskFullError(message, path=path, nbytes=nbytes)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is an out-of-space ``OSError``."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in _FULL:
            return True
        if "No space left on device" in str(cur) or "Disk quota exceeded" in str(cur):  # e.g. SafetensorError
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, fsync and rename.

    ``path`` holds either its old content or the new one, never a mix. A full disk raises
    :class:`DiskFullError` naming the file and the fix; the temporary file is
    removed and the old ``path`` is left as it was.
    """
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            nbytes = len(text.encode("utf-8"))
            raise DiskFullError(
                f"the disk holding {path} is full: no room to write its {nbytes:,} bytes. {path.name} keeps its "
                f"previous content. To fix: free space on that disk (or write the runs elsewhere), then run the "
                f"same command again; finished cells come from the cache",
                path=path,
                nbytes=nbytes,
            ) from exc
        raise
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
