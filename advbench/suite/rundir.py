"""The run directory: the resolved config and a manifest written before the first cell runs."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from advbench.config import Suite
from advbench.errors import AdvbenchError
from advbench.io import DiskFullError, atomic_write_text, is_disk_full

__all__ = ["RunDir"]


def _git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip() or "unknown"
    return commit + ("+dirty" if dirty.stdout.strip() else "")


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

    @classmethod
    def create(cls, runs_dir: str | Path, suite: Suite, *, resume: bool = False) -> RunDir:
        runs = Path(runs_dir)
        runs.mkdir(parents=True, exist_ok=True)
        if resume:
            latest = cls.latest(runs, suite.name)
            if latest is not None:
                rd = cls(latest)
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
        rd.results.mkdir()
        return rd

    @staticmethod
    def latest(runs_dir: Path, name: str) -> Path | None:
        found = sorted(
            (p for p in runs_dir.glob(f"{name}-*") if (p / "manifest.json").is_file()), key=lambda p: p.stat().st_mtime
        )
        return found[-1] if found else None

    def write_config(self, suite: Suite, source: str) -> None:
        text = f"# resolved from {source}\n" + yaml.safe_dump(suite.model_dump(mode="json"), sort_keys=False)
        atomic_write_text(self.path / "config.yaml", text)

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
                "suite_file": source,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "git_commit": _git_commit(),
                "versions": versions,
                "seeds": suite.seeds,
                "data": data,
                "hardware": hardware(),
                "plugins": plugins,
                "cache_dir": cache_dir,
                "cells": self.manifest.get("cells", {}),
                "status": "running",
            }
        )
        self.save()

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
    ) -> None:
        """Record a finished cell: computed or from the cache, its seconds and the node that ran it."""
        self.manifest.setdefault("failures", {}).pop(label, None)
        self.manifest.setdefault("cells", {})[label] = {
            "kind": kind,
            "key": key,
            "cached": cached,
            "seconds": round(seconds, 3),
            "node": node or platform.node(),
        } | ({"attempts": attempts} if attempts != 1 else {})
        # A computed cell is recorded at once; cache hits are cheap to redo, so batch their writes.
        if not cached or len(self.manifest["cells"]) % 50 == 0:
            self.save()

    def record_failure(self, label: str, kind: str, key: str, *, status: str, error: str) -> None:
        """Record a cell that failed, or was skipped because a cell it needs failed."""
        self.manifest.setdefault("cells", {}).pop(label, None)
        self.manifest.setdefault("failures", {})[label] = {"kind": kind, "key": key, "status": status, "error": error}
        self.save()

    def finish(self, wall_s: float, stage_seconds: dict[str, float]) -> None:
        self.manifest["status"] = "complete"
        self.manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.manifest["wall_s"] = round(wall_s, 2)
        self.manifest["stage_seconds"] = {k: round(v, 2) for k, v in stage_seconds.items()}
        self.save()

    def save(self) -> None:
        atomic_write_text(self.manifest_path, json.dumps(self.manifest, indent=1, sort_keys=True, default=str))
