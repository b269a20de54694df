"""advbench.analysis.results: a results folder is saved whole or not marked complete (a full disk leaves no
partial file)."""

from __future__ import annotations

import errno
from pathlib import Path

import pandas as pd
import pytest

from advbench.io import DiskFullError


def test_results_save_on_a_full_disk_leaves_no_partial_file(tmp_path, monkeypatch, empty_results):
    res = empty_results()
    calls = {"n": 0}
    real = pd.DataFrame.to_csv

    def full(self, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            Path(path).write_bytes(b"par")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, path, *a, **k)

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    with pytest.raises(DiskFullError, match="results table"):
        res.save(tmp_path / "results")
    files = sorted(p.name for p in (tmp_path / "results").iterdir())
    assert "suite.json" not in files  # not marked complete
    assert len(files) == 2 and all((tmp_path / "results" / f).stat().st_size > 0 for f in files)
