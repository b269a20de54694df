"""A content-addressed, crash-safe cache of cell outputs (models, adversarial sets, indices, tables).

An entry is a folder ``<root>/<kind>/<key[:2]>/<key>/`` holding the cell's files and a
``MANIFEST.json`` with the SHA-256 of each. It is built in a private temporary folder (files
fsynced) and renamed into place in one step, so a reader sees a whole entry or none, and a run
killed mid-write leaves only a temporary folder that the next run sweeps away. Reads verify every
checksum; a corrupt entry is reported, moved aside to ``<root>/corrupt/`` and recomputed. Two runs
sharing a cache may both compute an entry; the first rename wins and the other copy is dropped.
A full disk (``ENOSPC``) while writing is a :class:`DiskFullError` naming the cache folder and what
was being written; the half-written temporary folder is removed and existing entries are untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advbench.errors import CacheError
from advbench.hashing import sha256_file
from advbench.io import DiskFullError, is_disk_full

__all__ = ["Cache", "CacheEntry", "cache_key", "default_cache_dir"]

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
_STALE_TMP_SECONDS = 6 * 3600


def _folder_bytes(folder: Path) -> int:
    total = 0
    with contextlib.suppress(OSError):
        for f in folder.rglob("*"):
            with contextlib.suppress(OSError):
                if f.is_file():
                    total += f.stat().st_size
    return total


def _free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def default_cache_dir() -> Path:
    """``$ADVBENCH_CACHE``, else ``$XDG_CACHE_HOME/advbench/cells`` (``~/.cache/advbench/cells``)."""
    env = os.environ.get("ADVBENCH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "advbench" / "cells"


def cache_key(kind: str, spec: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of everything that determines a cell's output."""
    blob = json.dumps({"kind": kind, "spec": spec}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    kind: str
    key: str
    path: Path
    meta: dict[str, Any]

    def file(self, name: str) -> Path:
        return self.path / name


class Cache:
    """The cell cache rooted at ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.corrupt_found: list[str] = []

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r})"

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / key

    def exists(self, kind: str, key: str) -> bool:
        """Whether a complete entry is present (checksums are verified on :meth:`get`)."""
        return (self.path(kind, key) / MANIFEST).is_file()

    def get(self, kind: str, key: str) -> CacheEntry | None:
        """The verified entry, or ``None`` if absent; a corrupt entry is quarantined and ``None`` returned."""
        folder = self.path(kind, key)
        if not folder.is_dir():
            return None
        try:
            return self._verify(kind, key, folder)
        except CacheError as exc:
            log.warning("corrupt cache entry %s/%s: %s; it will be recomputed", kind, key[:12], exc)
            self.corrupt_found.append(f"{kind}/{key}")
            self._quarantine(folder)
            return None

    def _verify(self, kind: str, key: str, folder: Path) -> CacheEntry:
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise CacheError(f"unreadable manifest in {folder}: {exc}") from exc
        if not isinstance(manifest, dict):
            raise CacheError(f"malformed manifest in {folder}: expected a JSON object")
        if manifest.get("key") != key or manifest.get("kind") != kind:
            raise CacheError(f"{folder} holds {manifest.get('kind')}/{manifest.get('key')}, not {kind}/{key}")
        files = manifest.get("files", {}) if isinstance(manifest, dict) else None
        if not isinstance(files, dict):
            raise CacheError(f"malformed manifest in {folder}: expected a 'files' mapping")
        for name, digest in files.items():
            f = folder / name
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise CacheError(f"the manifest in {folder} names a file outside its entry: {name!r}")
            if not f.is_file():
                raise CacheError(f"{f} is missing")
            try:
                got = sha256_file(f)
            except OSError as exc:  # vanished (another run quarantined it) or unreadable
                raise CacheError(f"{f} cannot be read: {exc}") from exc
            if got != digest:
                raise CacheError(f"{f}: sha256 {got[:12]}... does not match the manifest's {digest[:12]}...")
        return CacheEntry(kind, key, folder, manifest.get("meta", {}))

    def discard(self, kind: str, key: str, reason: str) -> None:
        """Quarantine an entry whose checksums matched but whose contents were refused when read."""
        folder = self.path(kind, key)
        if folder.is_dir():
            log.warning("cache entry %s/%s refused (%s); it will be recomputed", kind, key[:12], reason)
            self.corrupt_found.append(f"{kind}/{key}")
            self._quarantine(folder)

    def _quarantine(self, folder: Path) -> None:
        dest = self.root / "corrupt" / f"{folder.name}-{int(time.time() * 1000)}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(folder, dest)
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)

    @contextlib.contextmanager
    def writer(self, kind: str, key: str, meta: dict[str, Any] | None = None) -> Iterator[Path]:
        """Yield a private folder to write the entry's files into; commit it atomically on success.

        Nothing is published if the block raises. If the disk fills up (in the block or while
        committing), the temporary folder is removed and :class:`DiskFullError` says where and how
        much was being written; entries already in the cache are untouched.
        """
        tmp_root = self.root / "tmp"
        try:
            tmp_root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f"{kind}-{key[:12]}-", dir=tmp_root))
        except OSError as exc:
            if is_disk_full(exc):
                raise self._disk_full(kind, key, None) from exc
            raise
        try:
            try:
                yield tmp
                self._commit(tmp, kind, key, meta)
            except Exception as exc:
                if is_disk_full(exc) and not isinstance(exc, DiskFullError):
                    raise self._disk_full(kind, key, _folder_bytes(tmp)) from exc
                raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _disk_full(self, kind: str, key: str, nbytes: int | None) -> DiskFullError:
        free = _free_bytes(self.root)
        size = f" after writing {nbytes:,} bytes of it" if nbytes is not None else ""
        left = f" ({free:,} bytes free)" if free is not None else ""
        return DiskFullError(
            f"the cache disk at {self.root} is full{left}: no room to store the {kind} entry {key[:12]}{size}. "
            f"Nothing was published and the entries already cached are intact. To fix: free space on that disk, "
            f"or point the cache at a disk with room (--cache-dir, $ADVBENCH_CACHE or the suite's cache_dir), "
            f"then run the same command again; finished cells are reused",
            path=self.root,
            nbytes=nbytes,
        )

    def _commit(self, tmp: Path, kind: str, key: str, meta: dict[str, Any] | None) -> None:
        files = {}
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
                files[str(f.relative_to(tmp))] = sha256_file(f)
        manifest = {"kind": kind, "key": key, "files": files, "meta": meta or {}, "created": time.time()}
        with open(tmp / MANIFEST, "w") as fh:
            json.dump(manifest, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        final = self.path(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists() and not (final / MANIFEST).is_file():
            shutil.rmtree(final, ignore_errors=True)  # a leftover without a manifest is never valid
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / MANIFEST).is_file():
                raise
            log.debug("cache entry %s/%s was written concurrently; keeping the first", kind, key[:12])
        _fsync_dir(final.parent)

    def sweep_tmp(self) -> int:
        """Remove temporary folders left by killed runs (older than a few hours, so live writers are safe)."""
        tmp_root = self.root / "tmp"
        if not tmp_root.is_dir():
            return 0
        n = 0
        now = time.time()
        for d in tmp_root.iterdir():
            with contextlib.suppress(OSError):
                if now - d.stat().st_mtime > _STALE_TMP_SECONDS:
                    shutil.rmtree(d, ignore_errors=True)
                    n += 1
        return n


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
