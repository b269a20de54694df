"""Shared fixtures: small real data and a quickly trained model (plain cross-entropy)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from advbench.data import DATASETS, Splits, load_dataset, make_splits
from advbench.models import Classifier, create_model

# torch's own warnings every time, not once per process: warnings are errors here (pyproject.toml), and a
# warn-once would fail whichever test happened to trigger it first
torch.set_warn_always(True)

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def digits_splits() -> Splits:
    """scikit-learn's 8x8 digits: 1,000 train, 200 calibration, 400 test (seed 0)."""
    return make_splits(load_dataset("digits"), train=1000, calibration=200, test=400, seed=0)


def quick_train(model: Classifier, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 8, seed: int = 0) -> Classifier:
    """A few epochs of Adam on cross-entropy: a real, reasonably accurate model for tests."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def digits_model(digits_splits: Splits) -> Classifier:
    """The cnn-digits architecture trained for a few seconds on the digits (about 95% test accuracy)."""
    torch.manual_seed(0)
    model = create_model("cnn-digits", num_classes=10, input_shape=digits_splits.input_shape)
    return quick_train(model, digits_splits.train.x, digits_splits.train.y)


@pytest.fixture
def install_dist() -> Any:
    """``install_dist(site, name, version, entry_points, modules)``: see :func:`_install_dist`."""
    return _install_dist


def _install_dist(site: Path, name: str, version: str, entry_points: str, modules: dict[str, str]) -> None:
    """A real installed distribution in the folder ``site`` (on sys.path): NAME-VERSION.dist-info with its
    METADATA and entry_points.txt, beside its modules (``{"module.py" or "pkg/__init__.py": source}``).
    A distribution already there under that name is replaced. Worker processes see it too (they get sys.path)."""
    import shutil
    import textwrap

    folder = name.replace("-", "_")
    for old in site.glob(f"{folder}-*.dist-info"):
        shutil.rmtree(old)
    info = site / f"{folder}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points).lstrip())
    for rel, code in modules.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(textwrap.dedent(code))


@pytest.fixture
def reload_plugins():
    """``reload(registry, *modules)``: forget ``modules`` and read ``registry``'s entry points again (after
    :func:`install_dist`); every registry reloaded is put back as it was when the test ends."""
    import importlib
    import sys

    saved: list[tuple[Any, dict[str, Any], bool]] = []
    dropped: list[str] = []

    def reload(registry: Any, *modules: str) -> None:
        if not any(r is registry for r, _, _ in saved):
            saved.append((registry, dict(registry._entries), registry._loaded))
        importlib.invalidate_caches()
        for m in modules:
            sys.modules.pop(m, None)
            dropped.append(m)
        registry._entries = dict(next(e for r, e, _ in saved if r is registry))
        registry._loaded = False
        registry.load_plugins()

    yield reload
    for registry, entries, loaded in saved:
        registry._entries = entries
        registry._loaded = loaded
    for m in dropped:
        sys.modules.pop(m, None)


# ---------------------------------------------------------------------------------------------------------------
# Helpers several test files use: a dataset plugin, empty results, a small checkpointable model, damaged files and
# a pickle payload.


@pytest.fixture
def user_dataset() -> Iterator[Callable[[Callable[[], object]], str]]:
    """Register a loader under a fresh name; unregistered afterwards."""
    names: list[str] = []

    def add(loader: Callable[[], object]) -> str:
        name = f"test-user-set-{len(names)}"
        DATASETS.add(name, loader, source="tests")
        names.append(name)
        return name

    yield add
    for name in names:
        DATASETS.unregister(name)


@pytest.fixture
def empty_results() -> Callable[..., Any]:
    """``empty_results(**suite)``: a Results with every table empty and no failures, for the suite ``suite``
    updates (a suite named ``t`` with no models by default)."""
    return _empty_results


def _empty_results(**suite: Any) -> Any:
    import pandas as pd

    from advbench.analysis.results import Results

    empty = pd.DataFrame()
    doc = {"name": "t", "models": [], "report": {"output": "x", "plots": False}} | suite
    return Results.from_parts(
        suite=doc,
        outcomes=empty,
        training=empty,
        clean=empty,
        dknn=empty,
        dknn_examples=empty,
        gradient_flags=empty,
        failures=pd.DataFrame(columns=["cell", "kind", "status", "error"]),
    )


@pytest.fixture
def tiny_mlp() -> Callable[[], torch.nn.Module]:
    """``tiny_mlp()``: the ``mlp`` architecture for 3 classes of 1x4x4 inputs, seeded (the same weights each call)."""

    def make() -> torch.nn.Module:
        torch.manual_seed(0)
        return create_model("mlp", num_classes=3, input_shape=(1, 4, 4))

    return make


@pytest.fixture
def checkpoint_card() -> Callable[[], dict[str, Any]]:
    """``checkpoint_card()``: a fresh model card for :func:`advbench.training.save_checkpoint`."""
    return lambda: {"params": {}, "seed": 0, "metrics": {"test_accuracy": 0.5, "loss": float("nan")}}


@pytest.fixture
def damage_file() -> Callable[[Path, str], None]:
    """``damage_file(path, how)``: ``how`` is ``truncate`` (keep the first half), ``flip-middle`` or ``flip-last``
    (flip one bit of the middle byte, or of the last but one)."""
    return _damage_file


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset % len(raw)] ^= 0x10
    path.write_bytes(bytes(raw))


def _damage_file(path: Path, how: str) -> None:
    if how == "truncate":
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "flip-middle":
        _flip(path, path.stat().st_size // 2)
    elif how == "flip-last":
        _flip(path, -2)
    else:
        raise ValueError(how)


class _PicklePayload:
    """Unpickling this creates ``marker``: the proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.marker),))


@pytest.fixture
def pickle_payload() -> type[_PicklePayload]:
    """``pickle_payload(marker)``: an object whose unpickling creates the file ``marker``."""
    return _PicklePayload


# ---------------------------------------------------------------------------------------------------------------
# Test tiers. Every test not marked integration, slow or benchmark is in the unit tier (marker `unit`), and the
# unit tier keeps to its definition: no subprocess running the advbench CLI (or a Python child running advbench),
# no Ray cluster. A unit test that does either fails, naming the marker to use instead.

_OTHER_TIERS = ("integration", "slow", "benchmark")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in _OTHER_TIERS):
            item.add_marker(pytest.mark.unit)


def _runs_advbench(args: Any) -> bool:
    """Whether a subprocess's argv starts the advbench CLI or a Python child that imports advbench."""
    argv = [str(a) for a in ([args] if isinstance(args, (str, bytes, os.PathLike)) else list(args))]
    text = " ".join(argv)
    return bool(argv) and (
        Path(argv[0]).name == "advbench" or "advbench.cli" in text or ("-c" in argv and "advbench" in text)
    )


@pytest.fixture(autouse=True)
def _unit_tier_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    if request.node.get_closest_marker("unit") is None:
        yield
        return
    import subprocess

    real_init = subprocess.Popen.__init__

    def guarded_init(self: subprocess.Popen, args: Any, *a: Any, **kw: Any) -> None:
        if _runs_advbench(args):
            raise AssertionError(
                f"a unit test started advbench in a subprocess ({args!r}); call the function in-process, "
                "or mark the test @pytest.mark.integration"
            )
        real_init(self, args, *a, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded_init)
    yield
    ray = __import__("sys").modules.get("ray")
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        ray.shutdown()
        raise AssertionError("a unit test started Ray; mark it @pytest.mark.integration")
