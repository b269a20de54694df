"""The run directory: the resolved config and a manifest written before the first cell runs.

Every file goes through :mod:`advbench.io` (atomic, disk-full-aware). ``--resume`` continues the
latest run whose manifest records the *same* suite name and resolved-config hash (never a name
prefix: ``t1`` never resumes ``t1-other``). Provenance is reproducible: when the git tree is dirty,
``provenance.diff`` keeps ``git diff HEAD`` and ``provenance-untracked.txt`` lists untracked files;
paths in the manifest are relative to the project root, never absolute local paths.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from advbench.errors import AdvbenchError
from advbench.io import DiskFullError, atomic_write_bytes, atomic_write_text, is_disk_full, relative_to_project

if TYPE_CHECKING:
    from advbench.config import Suite

__all__ = ["RunDir", "atomic_write_text", "config_hash", "git_provenance"]

log = logging.getLogger(__name__)

#: Largest diff kept in a run folder; a bigger one is cut and the manifest says so.
_MAX_DIFF_BYTES = 20 * 2**20


def config_hash(suite: Suite) -> str:
    """SHA-256 of the suite's resolved config (canonical JSON): what ``--resume`` matches on."""
    return _hash_config(suite.model_dump(mode="json"))


def _hash_config(data: Any) -> str:
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes] | None:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None


def git_provenance(cwd: str | Path | None = None) -> dict[str, Any]:
    """The commit, whether the tree is dirty, ``git diff HEAD`` (bytes) and the untracked files' paths.

    ``cwd`` defaults to the folder of advbench's own source. Outside a git tree: commit ``"unknown"``.
    """
    here = Path(cwd) if cwd is not None else Path(__file__).resolve().parent
    out: dict[str, Any] = {"commit": "unknown", "dirty": False, "diff": b"", "untracked": []}
    head = _git(["rev-parse", "HEAD"], here)
    if head is None or head.returncode != 0:
        return out
    out["commit"] = head.stdout.decode().strip() or "unknown"
    diff = _git(["diff", "HEAD", "--binary", "--no-color", "--no-ext-diff"], here)
    untracked = _git(["ls-files", "--others", "--exclude-standard", "--full-name", "-z"], here)
    out["diff"] = diff.stdout if diff is not None and diff.returncode == 0 else b""
    if untracked is not None and untracked.returncode == 0:
        out["untracked"] = sorted(n for n in untracked.stdout.decode("utf-8", "replace").split("\0") if n)
    out["dirty"] = bool(out["diff"] or out["untracked"])
    return out


def hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.cuda.is_available(),
    }
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


class RunDir:
    """``runs/<suite>-<timestamp>/`` with ``config.yaml``, ``manifest.json`` and ``results/``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.results = path / "results"
        self.manifest_path = path / "manifest.json"
        self.manifest: dict[str, Any] = {}
        self._lock: Any = None

    def lock(self) -> None:
        """Hold an exclusive lock on this folder while this process writes it (``.lock``; the OS drops it when the
        process ends, even by ``kill -9``). A folder another process holds is refused, naming that process."""
        try:
            import fcntl
        except ImportError:  # no advisory locks on this platform
            return
        fh = open(self.path / ".lock", "a+", encoding="utf-8")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "an unknown process"
            fh.close()
            raise AdvbenchError(
                f"{self.path}: {holder} is still writing this run folder, so resuming it here would mix two runs' "
                f"writes. Wait for that run to end (or stop it), then --resume; or leave out --resume for a new folder"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"advbench process {os.getpid()} on {platform.node()}\n")
        fh.flush()
        # closed (and the lock dropped) by release(), or when this RunDir is collected: never left open
        self._lock = weakref.finalize(self, fh.close)

    def release(self) -> None:
        """Drop the lock of :meth:`lock` (the run ended, finished or not)."""
        if self._lock is not None:
            self._lock()
            self._lock = None

    @classmethod
    def create(cls, runs_dir: str | Path, suite: Suite, *, resume: bool = False) -> RunDir:
        runs = Path(runs_dir)
        runs.mkdir(parents=True, exist_ok=True)
        if resume:
            latest = cls.latest(runs, suite.name, config_hash(suite))
            if latest is None:
                log.info(
                    "--resume: no run of suite %r with this resolved config under %s; starting a new one",
                    suite.name,
                    runs,
                )
            else:
                rd = cls(latest)
                rd.lock()
                rd.manifest = json.loads(rd.manifest_path.read_text())
                rd.manifest.setdefault("resumed", []).append(time.strftime("%Y-%m-%dT%H:%M:%S"))
                return rd
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for i in range(1000):
            path = runs / (f"{suite.name}-{stamp}" + (f"-{i}" if i else ""))
            try:
                # mkdir is atomic: of runs started in the same second (even in other processes) exactly
                # one gets each name, so an earlier run's folder is never reused or overwritten
                path.mkdir()
                break
            except FileExistsError:
                continue
            except OSError as exc:
                if is_disk_full(exc):
                    raise DiskFullError(
                        f"the disk holding {runs} is full: no room for the run folder {path.name}. To fix: free "
                        f"space on that disk (or write the runs elsewhere), then run the same command again",
                        path=runs,
                    ) from exc
                raise
        else:
            raise AdvbenchError(
                f"could not create a fresh run folder under {runs}: {suite.name}-{stamp} and its 999 numbered "
                f"variants all exist; expected at most a few runs per second; remove old runs or pick another runs dir"
            )
        rd = cls(path)
        rd.lock()
        rd.results.mkdir()
        return rd

    @staticmethod
    def latest(runs_dir: Path, name: str, chash: str | None = None) -> Path | None:
        """The most recently started run of suite ``name`` (and, if given, resolved-config hash ``chash``).

        A run is matched by what its ``manifest.json`` records (``suite`` exactly equal to ``name``;
        ``config_hash``, or for older runs the hash of its ``config.yaml``), never by folder-name prefix.
        Symlinked folders and unreadable manifests are skipped.
        """
        found = [(mtime, path) for mtime, path, manifest in _suite_runs(runs_dir, name)
                 if chash is None or _recorded_hash(path, manifest) == chash]  # fmt: skip
        return max(found)[1] if found else None

    @staticmethod
    def worker_memory_mb(runs_dir: str | Path, name: str) -> tuple[float, Path] | None:
        """The largest peak memory of a local worker process recorded by a run of suite ``name``, with that run."""
        found = []
        for _, path, manifest in _suite_runs(runs_dir, name):
            local = manifest.get("local")
            peak = local.get("worker_peak_rss_mb") if isinstance(local, dict) else None
            if isinstance(peak, int | float) and peak > 0:
                found.append((float(peak), path))
        return max(found) if found else None

    @staticmethod
    def measured_seconds(runs_dir: str | Path, name: str) -> tuple[dict[str, float], dict[str, float]]:
        """The seconds computed cells took, by cell key and by cell label, from the manifests of the runs of suite
        ``name`` under ``runs_dir``: a computed cell's seconds, or the ``compute_seconds`` a cache hit carries
        over from the run that computed it; a later run's record wins. By label, a cell is found again after its
        code (so its key) changed.

        Every cell kind is recorded there, not only those whose cache entries keep their seconds. For estimates
        (``--plan``, the ETA) only: unreadable manifests are skipped.
        """
        by_key: dict[str, float] = {}
        by_label: dict[str, float] = {}
        for _, _, manifest in sorted(_suite_runs(runs_dir, name), key=lambda r: r[0]):
            cells = manifest.get("cells")
            for label, cell in cells.items() if isinstance(cells, dict) else ():
                if not isinstance(cell, dict):
                    continue
                # a computed cell's seconds, or what a cache hit's computation took (a manifest may lack it)
                key = cell.get("key")
                seconds = cell.get("seconds") if cell.get("cached") is False else cell.get("compute_seconds")
                if isinstance(key, str) and isinstance(seconds, int | float) and seconds > 0:
                    by_key[key] = by_label[label] = float(seconds)
        return by_key, by_label

    def write_config(self, suite: Suite, source: str) -> None:
        text = f"# resolved from {source}\n" + yaml.safe_dump(suite.model_dump(mode="json"), sort_keys=False)
        atomic_write_text(self.path / "config.yaml", text, what="the resolved config")

    def start(
        self,
        suite: Suite,
        *,
        source: str,
        versions: dict[str, str],
        data: dict[str, Any],
        plugins: dict[str, Any],
        cache_dir: str,
    ) -> None:
        self.manifest.update(
            {
                "suite": suite.name,
                "suite_file": relative_to_project(source),
                "config_hash": config_hash(suite),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **self._provenance(),
                "versions": versions,
                "seeds": suite.seeds,
                "data": data,
                "hardware": hardware(),
                "plugins": plugins,
                "cache_dir": relative_to_project(cache_dir),
                "cells": self.manifest.get("cells", {}),
                "status": "running",
            }
        )
        self.save()

    def _provenance(self) -> dict[str, Any]:
        """The commit; for a dirty tree, keep the diff and the untracked files' list in the run folder."""
        prov = git_provenance()
        out: dict[str, Any] = {"git_commit": prov["commit"] + ("+dirty" if prov["dirty"] else "")}
        if not prov["dirty"]:
            return out
        diff: bytes = prov["diff"]
        cut = len(diff) > _MAX_DIFF_BYTES
        atomic_write_bytes(self.path / "provenance.diff", diff[:_MAX_DIFF_BYTES], what="the uncommitted changes")
        atomic_write_text(
            self.path / "provenance-untracked.txt",
            "".join(f"{n}\n" for n in prov["untracked"]),
            what="the list of untracked files",
        )
        out["provenance"] = {
            "diff": "provenance.diff",
            "diff_sha256": hashlib.sha256(diff).hexdigest(),
            "diff_bytes": len(diff),
            "diff_truncated": cut,
            "untracked": "provenance-untracked.txt",
            "n_untracked": len(prov["untracked"]),
        }
        if cut:
            log.warning("the uncommitted diff is %d bytes; only the first %d are kept", len(diff), _MAX_DIFF_BYTES)
        return out

    def record_cell(
        self,
        label: str,
        kind: str,
        key: str,
        *,
        cached: bool,
        seconds: float,
        node: str | None = None,
        attempts: int = 1,
        compute_seconds: float | None = None,
    ) -> None:
        """Record a finished cell: computed or from the cache, its seconds in this run and the node that ran it.

        ``compute_seconds``: what computing it took (this run's ``seconds`` for a computed cell; for a cache hit,
        what an earlier run or part measured, when known), so that one manifest holds every cell's cost.
        """
        if compute_seconds is None and not cached:
            compute_seconds = seconds
        self.manifest.setdefault("failures", {}).pop(label, None)
        self.manifest.setdefault("cells", {})[label] = (
            {"kind": kind, "key": key, "cached": cached, "seconds": round(seconds, 3)}
            | ({"compute_seconds": round(compute_seconds, 3)} if compute_seconds is not None else {})
            | {"node": node or platform.node()}
            | ({"attempts": attempts} if attempts != 1 else {})
        )
        # A computed cell is recorded at once; cache hits are cheap to redo, so batch their writes.
        if not cached or len(self.manifest["cells"]) % 50 == 0:
            self.save()

    def record_failure(self, label: str, kind: str, key: str, *, status: str, error: str) -> None:
        """Record a cell that failed, or was skipped because a cell it needs failed."""
        self.manifest.setdefault("cells", {}).pop(label, None)
        self.manifest.setdefault("failures", {})[label] = {"kind": kind, "key": key, "status": status, "error": error}
        self.save()

    def finish(self, wall_s: float, stage_seconds: dict[str, float], *, status: str = "complete") -> None:
        """Record the end of the run; ``status`` is ``complete`` only once the results and report are written."""
        self.manifest["status"] = status
        self.manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.manifest["wall_s"] = round(wall_s, 2)
        self.manifest["stage_seconds"] = {k: round(v, 2) for k, v in stage_seconds.items()}
        self.save()
        if status == "complete":
            self.release()

    def save(self) -> None:
        atomic_write_text(
            self.manifest_path,
            json.dumps(self.manifest, indent=1, sort_keys=True, default=str),
            what="the run manifest",
        )


def _suite_runs(runs_dir: str | Path, name: str) -> list[tuple[float, Path, dict[str, Any]]]:
    """(mtime, folder, manifest) of every run of suite ``name`` under ``runs_dir``, matched by what its
    ``manifest.json`` records, never by folder-name prefix; symlinked folders and unreadable manifests are
    skipped."""
    try:
        entries = list(os.scandir(runs_dir))
    except OSError:
        return []
    out = []
    for entry in entries:
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            manifest = json.loads((Path(entry.path) / "manifest.json").read_text(encoding="utf-8"))
            if isinstance(manifest, dict) and manifest.get("suite") == name:
                out.append((entry.stat(follow_symlinks=False).st_mtime, Path(entry.path), manifest))
        except (OSError, ValueError):
            continue
    return out


def _recorded_hash(path: Path, manifest: dict[str, Any]) -> str | None:
    """The resolved-config hash a run recorded; for runs from before it was recorded, that of its config.yaml."""
    recorded = manifest.get("config_hash")
    if isinstance(recorded, str):
        return recorded
    try:
        data = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return _hash_config(data) if isinstance(data, dict) else None
