"""The worked examples of docs/plugins.md run, and work through advbench's own machinery.

Every fenced ``python`` block of the page starts with the file it stands for (``# my_plugins/attacks.py``)
or with ``# docs: not executed``. The executed blocks are written to those files in a temporary folder and
imported, each as its own module (a fresh namespace with a real source file, so that code identity can
read it); their decorators register the examples, and the registries are put back as they were when each
test ends. Each example is then exercised the way a suite would use it, and every ``yaml`` block, completed
into a minimal suite, must pass ``validate_suite_dict`` while the examples are registered. The last test
installs the same files as a package (a dist-info with the page's entry points, no pip) and checks that the
registries find them and key them by the distribution's name and version.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from advbench.analysis.claims import CLAIMS, claims_table
from advbench.attacks import ATTACKS
from advbench.data import DATASETS
from advbench.errors import ConfigError
from advbench.models import MODELS
from advbench.training import REGULARISERS

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "plugins.md"
NOT_EXECUTED = "# docs: not executed"
PACKAGE = "my_plugins"

#: what the page's examples register: name -> registry
EXAMPLES = {
    "r-fgsm": ATTACKS,
    "norm-penalty": REGULARISERS,
    "norm-penalty-costs-accuracy": CLAIMS,
    "tiny-cnn": MODELS,
    "my-mlp": MODELS,
    "my-npz": DATASETS,
}
REGISTRIES = (ATTACKS, REGULARISERS, CLAIMS, MODELS, DATASETS)

#: the minimal suite a YAML block of the page is completed into (its top-level keys replace these)
BASE_SUITE: dict[str, Any] = {
    "name": "docs-plugins",
    "dataset": {"name": "digits", "splits": {"train": 500, "test": 200}},
    "models": [{"name": "baseline", "architecture": "cnn-digits", "recipe": {"epochs": 1}}],
    "seeds": [0],
}
#: placeholders the page writes where a reader puts their own value
PLACEHOLDERS = {"<the digest export() returned>": "sha256:" + "0" * 64}


# -- reading the page ------------------------------------------------------------------------------------


def _blocks(lang: str) -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    return [m.group(1) for m in re.finditer(rf"^```{lang}\n(.*?)^```", text, re.MULTILINE | re.DOTALL)]


def _python_files() -> dict[str, str]:
    """The executed Python blocks by the file they stand for (``my_plugins/attacks.py`` -> source)."""
    files: dict[str, str] = {}
    for code in _blocks("python"):
        first = code.splitlines()[0]
        if first.startswith(NOT_EXECUTED):
            continue
        m = re.fullmatch(r"# ([\w/]+\.py)", first)
        assert m, f"a python block of {DOC.name} starts with {first!r}; expected '# path/file.py' or {NOT_EXECUTED!r}"
        assert m.group(1) not in files, f"two python blocks stand for {m.group(1)}"
        files[m.group(1)] = code
    return files


def _module(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def _yaml_block(containing: str) -> dict[str, Any]:
    found = [yaml.safe_load(b) for b in _yaml_texts() if containing in b]
    assert len(found) == 1, f"expected one yaml block mentioning {containing!r}, found {len(found)}"
    return found[0]


def _yaml_texts() -> list[str]:
    out = []
    for text in _blocks("yaml"):
        for placeholder, value in PLACEHOLDERS.items():
            text = text.replace(placeholder, value)
        out.append(text)
    return out


def _suite(*fragments: dict[str, Any]) -> dict[str, Any]:
    suite = dict(BASE_SUITE)
    for f in fragments:
        suite.update(f)
    return suite


# -- registering the examples ----------------------------------------------------------------------------


@contextlib.contextmanager
def _examples_registered(folder: Path) -> Iterator[dict[str, ModuleType]]:
    """Import every executed block from ``folder`` (each its own module); afterwards the registries, sys.path
    and sys.modules are as they were."""
    for registry in REGISTRIES:
        registry.load_plugins()  # built-ins first: restoring must not drop anything loaded meanwhile
    saved = [(r, dict(r._entries), r._loaded) for r in REGISTRIES]
    files = _python_files()
    (folder / PACKAGE).mkdir(parents=True, exist_ok=True)
    (folder / PACKAGE / "__init__.py").write_text("")
    for rel, code in files.items():
        (folder / rel).write_text(code)
    tops = {_module(rel).split(".")[0] for rel in files}
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    try:
        yield {_module(rel): importlib.import_module(_module(rel)) for rel in files}
    finally:
        for registry, entries, loaded in saved:
            registry._entries = entries
            registry._loaded = loaded
        sys.path.remove(str(folder))
        for name in [m for m in sys.modules if m.split(".")[0] in tops]:
            del sys.modules[name]
        importlib.invalidate_caches()


@pytest.fixture
def examples(tmp_path: Path) -> Iterator[dict[str, ModuleType]]:
    with _examples_registered(tmp_path / "src") as modules:
        yield modules


@pytest.fixture
def in_project(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation resolves the suite's paths against the working folder: the project's."""
    monkeypatch.chdir(ROOT)


def test_every_block_is_a_file_or_marked_and_the_page_covers_every_kind():
    files = _python_files()
    for kind in ("attacks", "regularisers", "claims", "models", "brought", "datasets"):
        assert f"{PACKAGE}/{kind}.py" in files
    assert len(_blocks("python")) > len(files)  # the not-executed blocks exist and are marked
    for text in _yaml_texts():
        assert isinstance(yaml.safe_load(text), dict)
    assert "<" not in "".join(_yaml_texts()), "a yaml block has a placeholder the test does not fill in"


def test_the_examples_register_their_names_and_leave_nothing_behind(tmp_path, in_project):
    from advbench.cli.list_cmd import rows
    from advbench.suite.validate import validate_suite_dict

    attacks_yaml = _yaml_block("r-fgsm")
    with _examples_registered(tmp_path) as modules:
        for name, registry in EXAMPLES.items():
            assert name in registry, f"{name} is not registered by the page's examples"
            assert registry.entry(name).source == "user"  # a claim is credited by its statistic's module
        row = next(r for r in rows("attacks", "r-fgsm") if r["name"] == "r-fgsm")
        assert row["source"] == "user" and row["parameters"] == "alpha=0.5" and row["norm"] == "linf"
        assert f"{PACKAGE}.attacks" in modules
        validate_suite_dict(_suite(attacks_yaml))
    for name, registry in EXAMPLES.items():
        assert name not in registry
    assert not any(m == PACKAGE or m.startswith(f"{PACKAGE}.") for m in sys.modules)
    with pytest.raises(ConfigError, match="r-fgsm"):
        validate_suite_dict(_suite(attacks_yaml))


@pytest.mark.parametrize("index", range(len(_blocks("yaml"))))
def test_each_yaml_block_validates_as_a_suite(examples, in_project, index):
    from advbench.suite.validate import validate_suite_dict

    fragment = yaml.safe_load(_yaml_texts()[index])
    suite = validate_suite_dict(_suite(fragment), source=f"{DOC.name} yaml block {index}")
    assert suite.name == "docs-plugins"


# -- attacks ---------------------------------------------------------------------------------------------


def test_attack_runs_through_the_contract_and_is_validated(examples, digits_model, digits_splits):
    from advbench.attacks import AttackParamsError, ThreatModel, create_attack, generate
    from advbench.attacks.base import FLOAT_ATOL
    from advbench.errors import ThreatModelError

    entry = _yaml_block("r-fgsm")["attacks"][0]
    attack = create_attack(entry["name"], **entry["params"])
    assert isinstance(attack, examples[f"{PACKAGE}.attacks"].RandFGSM)
    assert repr(attack) == "RandFGSM(alpha=0.5)"
    x, y = digits_splits.test.x[:200], digits_splits.test.y[:200]
    threat = ThreatModel(eps=0.1)
    weights = {k: v.clone() for k, v in digits_model.state_dict().items()}
    x_before = x.clone()

    result = generate(digits_model, attack, x, y, threat, batch_size=100, seed=0)
    assert float(result.linf.max()) <= 0.1 + FLOAT_ATOL
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0
    with torch.no_grad():
        clean_accuracy = float((digits_model(x).argmax(1) == y).float().mean())
    assert 1 - result.success_rate < clean_accuracy - 0.05  # a real attack: it costs accuracy
    again = generate(digits_model, attack, x, y, threat, batch_size=100, seed=0)
    assert torch.equal(again.x_adv, result.x_adv)  # the generator advbench hands it makes it reproducible
    assert torch.equal(x, x_before)
    assert all(torch.equal(v, weights[k]) for k, v in digits_model.state_dict().items())

    with pytest.raises(AttackParamsError, match=r"alpha: expected a number in \[0, 1\)"):
        create_attack("r-fgsm", alpha=1.5)
    with pytest.raises(AttackParamsError, match="alpha"):
        create_attack("r-fgsm", alpha="0.5")
    with pytest.raises(ThreatModelError, match="L-inf attack"):
        attack(digits_model, x[:8], y[:8], ThreatModel(eps=1.0, norm="l2"))


# -- regularisers ----------------------------------------------------------------------------------------


def _recipe(fragment: dict[str, Any], model: str) -> Any:
    from advbench.suite.validate import validate_suite_dict

    suite = validate_suite_dict(_suite(fragment))
    return next(m for m in suite.models if m.name == model).recipe


def test_regulariser_trains_one_step_and_logs_its_terms(examples, in_project, digits_splits):
    from advbench.models import create_model
    from advbench.training import RegulariserContext, TrainStep, create_regulariser, train_model, weights_hash

    recipe = _recipe(_yaml_block("name: norm-penalty"), "norm-penalty")
    torch.manual_seed(0)
    model = create_model("cnn-digits", num_classes=10, input_shape=digits_splits.input_shape)
    x, y = digits_splits.train.x[:64], digits_splits.train.y[:64]
    with torch.no_grad():
        h = model.features(x, ["fc1"])["fc1"]
    expected = float(h.flatten(1).norm(dim=1).pow(2).mean())

    step = TrainStep(model, recipe, layers=list(model.hidden_layers))
    assert isinstance(step.regularisers["norm-penalty"], examples[f"{PACKAGE}.regularisers"].NormPenalty)
    before = weights_hash(model)
    terms = step(x, y)
    term = terms.regularisers["norm-penalty/fc1"].item()
    assert term == pytest.approx(expected, rel=1e-5)
    assert terms.loss.item() == pytest.approx(terms.ce.item() + 0.001 * term, rel=1e-6)
    assert weights_hash(model) != before
    assert step.regularisers["norm-penalty"].metrics["mean_norm/fc1"] > 0

    short = recipe.model_copy(update={"epochs": 1})
    torch.manual_seed(0)
    fresh = create_model("cnn-digits", num_classes=10, input_shape=digits_splits.input_shape)
    result = train_model(fresh, digits_splits.train.x[:200], digits_splits.train.y[:200], short, seed=0, probe=None)
    assert {"norm-penalty/fc1", "norm-penalty/mean_norm/fc1"} <= set(result.history[-1])

    ctx = RegulariserContext(layers=("fc1",), weight=0.001, num_classes=10, dims={"fc1": 64})
    with pytest.raises(ValueError, match="power must be > 0"):
        create_regulariser("norm-penalty", ctx, {"power": 0})


def test_regulariser_params_are_checked_by_validate(examples, in_project):
    from advbench.suite.validate import validate_suite_dict

    bad = _yaml_block("name: norm-penalty")
    bad["models"][1]["recipe"]["regularisers"][0]["params"] = {"powr": 2.0}
    with pytest.raises(ConfigError, match="powr"):
        validate_suite_dict(_suite(bad))


# -- claims ----------------------------------------------------------------------------------------------


@dataclass
class _Results:
    """The part of a run's results a claim reads (advbench.analysis.claims.TidyResults)."""

    suite: dict[str, Any]
    clean: pd.DataFrame
    training: pd.DataFrame = field(default_factory=pd.DataFrame)
    dknn: pd.DataFrame = field(default_factory=pd.DataFrame)
    dknn_examples: pd.DataFrame = field(default_factory=pd.DataFrame)
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)

    def example_summary(self, name: str) -> pd.DataFrame:
        return pd.DataFrame()


def _clean(baseline: list[float], penalised: list[float]) -> pd.DataFrame:
    rows = [{"model": "baseline", "seed": s, "test_accuracy": a, "n": 400} for s, a in enumerate(baseline)]
    rows += [{"model": "norm-penalty", "seed": s, "test_accuracy": a, "n": 400} for s, a in enumerate(penalised)]
    return pd.DataFrame(rows)


def test_claim_is_decided_on_results(examples):
    suite = _suite(_yaml_block("name: norm-penalty"), _yaml_block("claims:"))
    names = suite["claims"]
    claim = CLAIMS.get("norm-penalty-costs-accuracy")
    base = [0.95, 0.94, 0.96, 0.95]

    lower = claim.evaluate(_Results(suite, _clean(base, [0.92, 0.91, 0.935, 0.925])))
    assert lower.verdict == "supported"
    assert lower.seeds == (0, 1, 2, 3) and lower.estimate == pytest.approx(-0.0275)
    higher = claim.evaluate(_Results(suite, _clean(base, [0.97, 0.965, 0.975, 0.97])))
    assert higher.verdict == "contradicted"
    no_model = claim.evaluate(_Results(_suite(), _clean(base, base)))
    assert no_model.verdict == "not applicable" and "norm-penalty" in no_model.reason

    # the suite's claims decided together, as the report does: the built-in has no entangled model here
    table = claims_table(_Results(suite, _clean(base, [0.92, 0.91, 0.935, 0.925])), names)
    verdicts = dict(zip(table["name"], table["verdict"], strict=True))
    assert verdicts == {"norm-penalty-costs-accuracy": "supported", "c-entangled-clean-accuracy": "not applicable"}


# -- models ----------------------------------------------------------------------------------------------


def test_architecture_builds_with_its_declared_layers_and_trains(examples, in_project, digits_splits):
    from advbench.models import Classifier, create_model, declared_hidden_layers
    from advbench.suite.validate import validate_suite_dict
    from advbench.training import TrainStep, init_model, weights_hash

    fragment = _yaml_block("architecture: tiny-cnn")
    params = fragment["models"][0]["params"]
    model = create_model("tiny-cnn", num_classes=10, input_shape=digits_splits.input_shape, **params)
    assert isinstance(model, Classifier)
    assert model.hidden_layers == declared_hidden_layers("tiny-cnn", params) == ("conv1", "fc1")
    feats = model.features(digits_splits.test.x[:5])
    assert {k: tuple(v.shape) for k, v in feats.items()} == {"conv1": (5, 32, 4, 4), "fc1": (5, 64), "logits": (5, 10)}

    def init(seed: int) -> str:
        return weights_hash(
            init_model("tiny-cnn", params=params, num_classes=10, input_shape=digits_splits.input_shape, seed=seed)
        )

    assert init(0) == init(0) != init(1)  # initial weights follow the seed advbench gives

    recipe = _recipe(fragment, "entangled")
    step = TrainStep(model, recipe, layers=list(recipe.snnl.layers))
    terms = step(digits_splits.train.x[:64], digits_splits.train.y[:64])
    assert set(terms.snnl) == {"conv1", "fc1"} and torch.isfinite(terms.loss)

    bad = _yaml_block("architecture: tiny-cnn")
    bad["models"][1]["recipe"]["snnl"]["layers"] = ["conv2"]
    with pytest.raises(ConfigError, match="expected a hidden layer of 'tiny-cnn': conv1, fc1"):
        validate_suite_dict(_suite(bad))


def test_builder_brings_a_trained_model_with_checked_weights(examples, in_project, digits_splits, tmp_path):
    from advbench.attacks import ThreatModel, create_attack
    from advbench.errors import AdvbenchError
    from advbench.models.external import HookedClassifier, build_brought_model, load_weights

    entry = next(m for m in _yaml_block("builder: my-mlp")["models"] if m.get("builder") == "my-mlp")

    def build() -> Any:
        return build_brought_model(
            entry["builder"], num_classes=10, input_shape=digits_splits.input_shape, params=entry["params"], what="m"
        )

    model = build()
    assert isinstance(model, HookedClassifier) and model.layer_names == ("relu1", "logits")
    x, y = digits_splits.train.x[:500], digits_splits.train.y[:500]
    assert tuple(model.features(x[:3])["relu1"].shape) == (3, entry["params"]["width"])

    torch.manual_seed(0)  # "elsewhere": the user's own training
    opt = torch.optim.Adam(model.net.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    path = tmp_path / entry["weights"]["path"]
    digest = examples["export_weights"].export(model.net, str(path))
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)

    brought = build()
    load_weights(brought, path, digest, what="model 'mine'")
    brought.eval()
    xt, yt = digits_splits.test.x[:200], digits_splits.test.y[:200]
    with torch.no_grad():
        assert torch.equal(brought(xt), model.eval()(xt))
        assert float((brought(xt).argmax(1) == yt).float().mean()) > 0.7
    with pytest.raises(AdvbenchError, match="has sha256"):
        load_weights(build(), path, PLACEHOLDERS["<the digest export() returned>"], what="model 'mine'")

    result = create_attack("r-fgsm")(brought, xt, yt, ThreatModel(eps=0.1))  # a brought model is attacked too
    assert result.success.any()


# -- datasets --------------------------------------------------------------------------------------------


def test_dataset_loads_through_the_registry_and_is_checked(examples, tmp_path):
    from advbench.data import RawDataset, load_dataset, make_splits
    from advbench.errors import AdvbenchError, DataError
    from advbench.suite.context import _load_as_guest

    ds = _yaml_block("name: my-npz")["dataset"]
    folder = tmp_path / ds["data_dir"]
    folder.mkdir(parents=True)
    digits = load_dataset("digits")
    x = np.rint(digits.x_train / digits.max_value * 255).astype(np.uint8)
    y = digits.y_train
    np.savez(folder / ds["params"]["file"], x_train=x[:-300], y_train=y[:-300], x_test=x[-300:], y_test=y[-300:])

    raw = _load_as_guest(ds["name"], data_dir=str(folder), **ds["params"])  # as a run loads it
    assert isinstance(raw, RawDataset) and raw.num_classes == 10 and raw.input_shape == (1, 8, 8)
    splits = make_splits(raw, calibration=0, seed=0, **ds["splits"])
    assert (len(splits.train), len(splits.test)) == (1000, 300)
    assert float(splits.train.x.max()) <= 1.0 and len(splits.hashes["train"]) == 64

    with pytest.raises(DataError, match="not found"):
        load_dataset("my-npz", data_dir=str(tmp_path), file="missing.npz")
    with pytest.raises(DataError, match="no folder given"):
        load_dataset("my-npz")
    bad = y[:-300].copy()
    bad[0] = -1
    np.savez(folder / "bad.npz", x_train=x[:-300], y_train=bad)
    with pytest.raises(DataError, match=r"outside 0\.\.9"):
        load_dataset("my-npz", data_dir=str(folder), file="bad.npz")
    assert issubclass(DataError, AdvbenchError)


# -- code identity ---------------------------------------------------------------------------------------


def test_script_examples_are_keyed_by_their_source(examples):
    from advbench.codeversion import entry_component

    for name, registry in EXAMPLES.items():
        comp = entry_component(registry, name)  # a claim's: its statistic's code (the report's stamp reads it)
        assert comp.name.startswith(f"user:{PACKAGE}.") and comp.version.startswith("src.") and not comp.portable


def _entry_points() -> tuple[str, str, str]:
    """The page's pyproject.toml: (distribution, version, entry_points.txt)."""
    tomllib = pytest.importorskip("tomllib")
    (toml,) = _blocks("toml")
    project = tomllib.loads(toml)["project"]
    groups = project["entry-points"]
    assert set(groups) == {r.group for r in REGISTRIES}
    text = "".join(f"[{g}]\n" + "".join(f"{n} = {v}\n" for n, v in eps.items()) for g, eps in groups.items())
    return project["name"], project["version"], text


@pytest.mark.parametrize("version", ["as written", "0.0.0"])
def test_packaged_examples_are_found_through_entry_points(version, tmp_path, monkeypatch, install_dist, reload_plugins):
    from advbench.codeversion import entry_component

    dist, written, entry_points = _entry_points()
    version = written if version == "as written" else version
    files = {rel: code for rel, code in _python_files().items() if rel.startswith(f"{PACKAGE}/")}
    files[f"{PACKAGE}/__init__.py"] = ""
    site = tmp_path / "site"
    install_dist(site, dist, version, entry_points, files)
    monkeypatch.syspath_prepend(str(site))
    for i, registry in enumerate(REGISTRIES):
        registry.load_plugins()
        modules = [PACKAGE, *(_module(rel) for rel in files)] if i == 0 else []
        reload_plugins(registry, *modules)
    for name, registry in EXAMPLES.items():
        assert registry.entry(name).source == dist, name
        comp = entry_component(registry, name)
        assert comp.name == f"plugin:{dist}" and comp.portable
        if version == "0.0.0":
            assert re.fullmatch(r"0\.0\.0\+src\.[0-9a-f]{16}", comp.version)
        else:
            assert comp.version == version
