"""The default console: log levels by verbosity, progress and stage lines, epoch lines without NaN terms."""

from __future__ import annotations

import logging
import math

from advbench.cli.console import CONSOLE, RunProgress, configure_logging
from advbench.cli.list_cmd import matches
from advbench.suite.execute import CellReport
from advbench.suite.plan import Cell, Plan
from advbench.training.trainer import _fmt


def test_levels_by_verbosity():
    configure_logging(0)
    assert not logging.getLogger("advbench.training.trainer").isEnabledFor(logging.INFO)
    assert logging.getLogger(CONSOLE).isEnabledFor(logging.INFO)
    assert not logging.getLogger("faiss.loader").isEnabledFor(logging.INFO)
    assert logging.getLogger("advbench.suite.execute").isEnabledFor(logging.WARNING)
    configure_logging(1)
    assert logging.getLogger("advbench.training.trainer").isEnabledFor(logging.INFO)
    assert not logging.getLogger("faiss.loader").isEnabledFor(logging.INFO)
    configure_logging(2)
    assert logging.getLogger("faiss.loader").isEnabledFor(logging.INFO)
    configure_logging(0, quiet=True)
    assert not logging.getLogger(CONSOLE).isEnabledFor(logging.INFO)
    configure_logging(0)


def test_progress_lines_at_most_every_period_and_one_per_stage(caplog):
    cells = [Cell("train", f"t{i}", f"t{i}", [], {}, 10.0) for i in range(3)]
    cells += [Cell("attack", f"a{i}", f"a{i}", [], {}, 1.0) for i in range(30)]
    now = [0.0]
    progress = RunProgress(Plan(None, cells), every_s=10.0, clock=lambda: now[0])  # type: ignore[arg-type]
    configure_logging(0)
    with caplog.at_level(logging.INFO, logger=CONSOLE):
        for c in cells:
            now[0] += 1.0
            progress(CellReport(c.key, c.label, c.kind, "ok", cached=c.key == "t0"))
    lines = [r.getMessage() for r in caplog.records if r.name == CONSOLE]
    stage = [x for x in lines if "done:" in x]
    assert len(stage) == 2 and stage[0].startswith("train") and "1 from cache" in stage[0]
    periodic = [x for x in lines if "cells (" in x]
    assert 1 <= len(periodic) <= 3 and "left" in periodic[0]  # 30 s of attacks, one line per >= 10 s


def test_epoch_line_shows_only_the_terms_the_model_has():
    line = _fmt({"epoch": 1, "loss": 0.5, "snnl/conv1": math.nan, "temperature/conv1": math.nan, "seconds": 0.2})
    assert "nan" not in line and "snnl" not in line and "loss=0.5" in line


def test_list_pattern_is_substring_or_glob():
    assert matches("torchattacks.SignHunter", "sign")
    assert matches("torchattacks.SignHunter", "*SIGN*")
    assert not matches("torchattacks.SignHunter", "sign*")
    assert matches("sign-plugin", "sign*") and matches("fgsm", "")
