"""advbench.suite.context: CellContext.create. Every cell's key holds its kind's code and the thread count it
runs with (RunOptions.cell_threads: equal for the local and the Ray executor, the child's for a time-limited
attack), so a change to either moves exactly the keys it should; and the dataset's loader runs as a guest."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from test_data import _raw

import advbench.codeversion as cv
from advbench.attacks.contract import CHILD_THREADS
from advbench.config import Suite
from advbench.errors import AdvbenchError
from advbench.suite.context import CellContext, RunOptions

ROOT = Path(__file__).resolve().parents[1]
TINY = yaml.safe_load((ROOT / "tests" / "suites" / "tiny.yaml").read_text())


# -- cell keys: the code and the thread count -----------------------------------------------------


def _keys(**opts) -> dict[str, str]:
    ctx = CellContext.create(Suite.model_validate(TINY), RunOptions(cache_dir="/tmp/unused", progress=False, **opts))
    return {c.label: c.key for c in ctx.plan.cells}


def _kinds(**opts) -> dict[str, dict]:
    ctx = CellContext.create(Suite.model_validate(TINY), RunOptions(cache_dir="/tmp/unused", progress=False, **opts))
    return {c.label: (c.kind, c.spec["code"]) for c in ctx.plan.cells}


def test_every_cell_key_holds_its_kinds_handler_and_threads():
    for _label, (kind, code) in _kinds(threads=3).items():
        assert code["threads"] == 3
        assert code["components"]["cell"].startswith(f"advbench.suite.cells.{kind.replace('-', '_')}@")


def test_local_and_ray_with_equal_threads_give_equal_keys():
    assert _keys(threads=2) == _keys(threads=2, executor="ray")
    assert _keys(threads=1) == _keys(executor="ray")  # Ray's default is one thread per task


def test_different_thread_counts_never_share_a_key():
    one, two = _keys(threads=1), _keys(threads=2)
    assert not set(one.values()) & set(two.values())


def test_time_limited_attacks_are_keyed_with_the_childs_thread_count():
    limited = _kinds(threads=4, time_limit=30.0)
    for kind, code in limited.values():
        assert code["threads"] == (CHILD_THREADS if kind == "attack" else 4)
    assert {k for k, (kind, _) in limited.items() if kind == "train"} and _keys(threads=1) != _keys(threads=4)


@pytest.mark.parametrize("kind", ["train", "attack", "transfer", "dknn-index", "dknn-score"])
def test_changing_one_kinds_code_moves_its_keys_and_those_downstream(monkeypatch, kind):
    before = _kinds(threads=1)
    keys_before = _keys(threads=1)
    module = f"advbench.suite.cells.{kind.replace('-', '_')}"
    lock = {m: {**v, "version": v["version"] + (m == module)} for m, v in cv.read_lock().items()}
    monkeypatch.setattr(cv, "_lock", lambda: lock)
    after = _keys(threads=1)
    for label, (k, _) in before.items():
        if k == kind:
            assert after[label] != keys_before[label], label
    untouched = [label for label, (k, _) in before.items() if k == "train"] if kind != "train" else []
    assert all(after[label] == keys_before[label] for label in untouched)


# -- the dataset loader is a guest ----------------------------------------------------------------


@pytest.mark.parametrize("habit", ["float64", "exit"])
def test_a_dataset_loader_is_a_guest(user_dataset, tmp_path, habit):
    """A loader that changes torch's global state (restored) or calls sys.exit stops the run with its name."""
    import torch

    def loader() -> object:
        if habit == "exit":
            sys.exit(0)
        torch.set_default_dtype(torch.float64)
        return _raw()

    name = user_dataset(loader)
    doc = yaml.safe_load((Path(__file__).parent / "suites" / "tiny.yaml").read_text())
    doc["dataset"] = {"name": name}
    with pytest.raises(AdvbenchError, match=f"dataset {name!r}") as info:
        CellContext.create(Suite.model_validate(doc), RunOptions(cache_dir=str(tmp_path), progress=False))
    assert ("sys.exit(0)" if habit == "exit" else "default dtype") in str(info.value)
    assert torch.get_default_dtype() == torch.float32
