"""A content-addressed, crash-safe cache of cell outputs (models, adversarial sets, indices, tables).

An entry is a folder ``<root>/<kind>/<key[:2]>/<key>/`` holding the cell's files and a
``MANIFEST.json`` with the SHA-256 of each. It is built in a private temporary folder (files
fsynced) and renamed into place in one step, so a reader sees a whole entry or none, and a run
killed mid-write leaves only a temporary folder that the next run sweeps away. Reads verify every
checksum; a corrupt entry is reported, moved aside to ``<root>/corrupt/`` and recomputed. Two runs
sharing a cache may both compute an entry; the first rename wins and the other copy is dropped.
A full disk (``ENOSPC``) while writing is a :class:`DiskFullError` naming the cache folder and what
was being written; the half-written temporary folder is removed and existing entries are untouched.

The cache deletes only what it created. A root that advbench creates (or finds empty) gets a
``.advbench-cache`` marker file; temporary folders are named ``tmp/advbench-tmp-*`` and hold a
``.advbench-tmp`` file. :meth:`Cache.sweep_tmp` removes only such folders, never follows a symlink,
and does nothing at all under a root without the marker (``cache_dir: /`` or a folder with someone
else's files is used, with a warning, but never swept).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advbench.errors import AdvbenchError, CacheError
from advbench.hashing import sha256_file
from advbench.io import DiskFullError, atomic_write_text, fsync_dir, is_disk_full

__all__ = [
    "ROOT_MARKER",
    "TMP_MARKER",
    "TMP_PREFIX",
    "Cache",
    "CacheEntry",
    "DiskFullError",
    "cache_key",
    "default_cache_dir",
    "is_disk_full",
]

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
#: The file that marks a folder as an advbench cache; created when advbench creates the cache.
ROOT_MARKER = ".advbench-cache"
_ROOT_MARKER_TEXT = "This folder is an advbench cell cache; advbench may delete its own temporary folders under tmp/.\n"
#: Every temporary folder the cache makes is named with this prefix and holds :data:`TMP_MARKER`.
TMP_PREFIX = "advbench-tmp-"
TMP_MARKER = ".advbench-tmp"
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
        if self.root.exists() and not self.root.is_dir():
            raise AdvbenchError(
                f"cache folder {self.root}: is a file; expected a folder (it is created if missing). Give another "
                f"--cache-dir or $ADVBENCH_CACHE"
            )
        try:
            fresh = not self.root.exists() or (self.root.is_dir() and not any(self.root.iterdir()))
            self.root.mkdir(parents=True, exist_ok=True)
            if fresh or _looks_like_old_cache(self.root):
                self._mark()
        except OSError as exc:
            if is_disk_full(exc):
                raise self._disk_full("cache", "root", None) from exc
            raise
        if not self.is_marked():
            log.warning(
                "%s holds files that advbench did not create (no %s marker): it is used as a cache, but advbench "
                "will never clean up anything in it; point the cache at an empty or new folder to fix this",
                self.root,
                ROOT_MARKER,
            )
        self.corrupt_found: list[str] = []

    def _mark(self) -> None:
        marker = self.root / ROOT_MARKER
        if not marker.is_file():
            atomic_write_text(marker, _ROOT_MARKER_TEXT, what="the cache marker")

    def is_marked(self) -> bool:
        """Whether the root carries advbench's cache marker (a regular file, not a symlink)."""
        return _is_regular_file(self.root / ROOT_MARKER)

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r})"

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / key

    def exists(self, kind: str, key: str) -> bool:
        """Whether a complete entry is present (checksums are verified on :meth:`get`)."""
        return (self.path(kind, key) / MANIFEST).is_file()

    def recorded_seconds(self, kind: str, key: str) -> float | None:
        """The compute seconds the entry's producer recorded (``meta.seconds``), read from its manifest without
        verifying its files: for estimates only. ``None`` if absent, unreadable or not recorded."""
        try:
            manifest = json.loads((self.path(kind, key) / MANIFEST).read_text())
            seconds = manifest["meta"]["seconds"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return float(seconds) if isinstance(seconds, int | float) and seconds >= 0 else None

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

    def adopt(self, kind: str, old_key: str, new_key: str, note: str) -> bool:
        """Publish the verified entry ``old_key`` again under ``new_key`` (hard links where possible, else copies).

        For a change of key scheme whose code is unchanged (``advbench code migrate``). The old entry stays;
        ``note`` and the old key go into the new entry's meta. ``False`` if the old entry is absent or corrupt
        or the new one exists already.
        """
        if self.exists(kind, new_key):
            return False
        entry = self.get(kind, old_key)
        if entry is None:
            return False
        meta = {**entry.meta, "migrated_from": old_key, "migration": note}
        with self.writer(kind, new_key, meta) as folder:
            for src in sorted(entry.path.rglob("*")):
                if not src.is_file() or src.is_symlink() or src.name == MANIFEST:
                    continue
                dest = folder / src.relative_to(entry.path)
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(src, dest)
                except OSError:
                    shutil.copy2(src, dest)
        return True

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
            tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{kind}-{key[:12]}-", dir=tmp_root))
            (tmp / TMP_MARKER).touch()
        except OSError as exc:
            if is_disk_full(exc):
                raise self._disk_full(kind, key, None) from exc
            raise
        try:
            try:
                yield tmp
                self._commit(tmp, kind, key, meta)
            except Exception as exc:
                if is_disk_full(exc) and not (isinstance(exc, DiskFullError) and exc.path == str(self.root)):
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
        (tmp / TMP_MARKER).unlink(missing_ok=True)
        for f in sorted(tmp.rglob("*")):
            if f.is_file() and not f.is_symlink():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
                files[str(f.relative_to(tmp))] = sha256_file(f)
        manifest = {"kind": kind, "key": key, "files": files, "meta": meta or {}, "created": time.time()}
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True), what="the cache manifest")
        final = self.path(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.is_symlink():
            final.unlink()  # never follow (or keep) a link planted where an entry belongs
        elif final.exists() and not (final / MANIFEST).is_file():
            shutil.rmtree(final, ignore_errors=True)  # a leftover without a manifest is never valid
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / MANIFEST).is_file():
                raise
            log.debug("cache entry %s/%s was written concurrently; keeping the first", kind, key[:12])
        fsync_dir(final.parent)

    def sweep_tmp(self, *, older_than_s: float = _STALE_TMP_SECONDS) -> int:
        """Remove temporary folders left by killed runs; returns how many were removed.

        Only what this cache created is ever deleted: the root must carry the cache marker,
        ``<root>/tmp`` must be a real folder (not a symlink), and an entry is removed only if it is a
        real folder (never a symlink, never followed) named with :data:`TMP_PREFIX`, holding the
        :data:`TMP_MARKER` file, and untouched for ``older_than_s`` seconds (so live writers are safe).
        Anything else under ``tmp/`` is left alone and logged.
        """
        if not self.is_marked():
            log.info("not sweeping %s: it has no %s marker, so advbench did not create it", self.root, ROOT_MARKER)
            return 0
        tmp_root = self.root / "tmp"
        try:
            st = os.lstat(tmp_root)
        except OSError:
            return 0
        if not stat.S_ISDIR(st.st_mode):  # a symlink (or a file) planted as tmp/: never follow it
            log.warning("not sweeping %s: it is not a real folder", tmp_root)
            return 0
        n = 0
        now = time.time()
        with os.scandir(tmp_root) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if not (entry.name.startswith(TMP_PREFIX) and entry.is_dir(follow_symlinks=False)):
                        log.debug("sweep: leaving %s alone (advbench did not name it)", entry.path)
                        continue
                    if not _is_regular_file(Path(entry.path) / TMP_MARKER):
                        log.debug("sweep: leaving %s alone (no %s inside)", entry.path, TMP_MARKER)
                        continue
                    if now - entry.stat(follow_symlinks=False).st_mtime > older_than_s:
                        # rmtree never follows symlinks inside the tree (it unlinks them)
                        shutil.rmtree(entry.path, ignore_errors=True)
                        n += 1
        return n


def _is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _looks_like_old_cache(root: Path) -> bool:
    """A cache written before the marker existed: only cell-kind folders, ``tmp`` and ``corrupt``, with entries."""
    try:
        names = {p.name for p in root.iterdir()}
    except OSError:
        return False
    known = {"train", "attack", "transfer", "dknn-index", "dknn-score", "clean-eval", "tmp", "corrupt"}
    return bool(names) and names <= known and any((root / n).is_dir() and not (root / n).is_symlink() for n in names)
