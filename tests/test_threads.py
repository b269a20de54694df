"""The thread policy (advbench.suite.threads, and the CLI's part of it): passive OpenMP waiting set before torch
loads, ``--threads auto`` resolved once, never more threads than this machine can run."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from advbench.cli import OPENMP_DEFAULTS, passive_openmp
from advbench.cli.run_cmd import parse_threads
from advbench.suite.threads import (
    AUTO,
    available_cpus,
    check_local_threads,
    free_cpus,
    resolve_threads,
    thread_policy,
)


def test_passive_openmp_sets_only_what_the_user_left_unset():
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert passive_openmp(env) == {"KMP_BLOCKTIME": "0"}
    assert env == {"OMP_WAIT_POLICY": "ACTIVE", "KMP_BLOCKTIME": "0"}
    empty: dict[str, str] = {}
    assert passive_openmp(empty) == OPENMP_DEFAULTS == empty


@pytest.mark.integration  # a fresh interpreter: the variable must be set before torch loads
def test_the_cli_sets_passive_waiting_before_torch_loads():
    env = {k: v for k, v in os.environ.items() if k not in OPENMP_DEFAULTS}
    code = "import sys, os; import advbench.cli.main; print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
    # advbench.cli is imported before the subcommands (and torch): the variable is set first
    probe = "import sys, os; import advbench.cli; print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["PASSIVE", "False"]
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["PASSIVE", "True"]


@pytest.mark.parametrize(
    ("load", "cpus", "free"), [(0.0, 2, 2), (0.4, 2, 2), (1.0, 2, 1), (1.6, 2, 1), (7.0, 2, 1), (3.0, 16, 13)]
)
def test_free_cpus_is_the_cpus_minus_the_rounded_load_and_at_least_one(load, cpus, free):
    assert free_cpus(load, cpus) == free


def test_resolve_threads():
    assert resolve_threads(None) is None
    assert resolve_threads(3) == 3
    assert 1 <= resolve_threads(AUTO) <= available_cpus()  # type: ignore[operator]
    with pytest.raises(ValueError, match="whole number from 1 to 1024 or 'auto'"):
        resolve_threads("many")
    with pytest.raises(ValueError, match="from 1 to 1024"):
        resolve_threads(100_000)


def test_threads_flag_accepts_auto_and_counts():
    assert parse_threads("auto") == AUTO
    assert parse_threads(" AUTO ") == AUTO
    assert parse_threads("2") == 2


def test_thread_policy_records_the_machine_and_never_asks_to_change_the_default(monkeypatch, caplog):
    import advbench.suite.threads as threads

    monkeypatch.setattr(threads, "_load", lambda: 5.0)
    monkeypatch.setattr(threads, "available_cpus", lambda: 2)
    with caplog.at_level(logging.WARNING, logger="advbench.suite.threads"):
        record = thread_policy(None, 1)
        thread_policy(2, 2)  # an explicit count is the user's choice: no warning either
    assert record["free_cpus"] == 1 and record["cpus"] == 2 and record["loadavg_1m"] == 5.0
    assert caplog.text == ""


def test_cells_run_one_thread_each_by_default_on_every_executor():
    from advbench.suite.context import RunOptions

    for executor in ("local", "ray"):
        assert RunOptions(executor=executor).cell_threads("train") == 1
        assert RunOptions(executor=executor, threads=3).cell_threads("attack") == 3


def test_the_local_executor_runs_a_worker_per_cpu(monkeypatch):
    import torch

    import advbench.suite.threads as threads
    from advbench.suite.context import RunOptions

    monkeypatch.setattr(threads, "available_cpus", lambda: 8)
    assert RunOptions().local_workers() == 8
    assert RunOptions(threads=2).local_workers() == 4
    assert RunOptions(threads=16).local_workers() == 1
    assert RunOptions(workers=3).local_workers() == 3
    assert RunOptions().local_workers(torch.device("cuda")) == 1  # one process keeps a GPU busy


def test_more_threads_than_this_machine_can_run_is_refused():
    check_local_threads(8, cpus=2)  # up to 4 per CPU is allowed
    with pytest.raises(ValueError, match="may use 2 CPU") as err:
        check_local_threads(9, cpus=2)
    assert "pass at most 2" in str(err.value)
