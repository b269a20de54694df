"""Bring your own model: a network from a package outside advbench, and registered-architecture
weights, both loaded from checksummed safetensors files, take part in transfer and the DkNN."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import save_file

from advbench.cli.main import main
from advbench.config import ModelConfig
from advbench.hashing import sha256_file

PACKAGE = '''
"""A user's model package: builds a plain nn.Module and names its hidden layers."""
from torch import nn


def small_mlp(*, num_classes, input_shape, width=32):
    c, h, w = input_shape
    net = nn.Sequential(
        nn.Flatten(),
        nn.Linear(c * h * w, width),
        nn.ReLU(),
        nn.Linear(width, num_classes),
    )
    return net, ["2"]  # the ReLU's output is the hidden layer
'''


@pytest.fixture
def installed_usermodels(tmp_path, monkeypatch, reload_plugins, install_dist):
    """The user's package, installed on sys.path (worker processes get it too): its builder is an entry point
    in the ``advbench.models`` group."""
    from advbench.models import MODELS

    site = tmp_path / "site"
    install_dist(
        site,
        "usermodels",
        "1.0",
        "[advbench.models]\nsmall-mlp = usermodels:small_mlp\n",
        {"usermodels/__init__.py": PACKAGE},
    )
    monkeypatch.syspath_prepend(str(site))
    reload_plugins(MODELS, "usermodels")


def _train(net: torch.nn.Module, steps: int = 150) -> torch.nn.Module:
    from advbench.data import load_dataset

    raw = load_dataset("digits")
    x = torch.from_numpy(raw.x_train[:800]).float() / float(raw.max_value)
    y = torch.from_numpy(raw.y_train[:800]).long()
    torch.manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


def test_recipe_none_needs_weights_or_builder():
    with pytest.raises(ValueError, match="recipe: none"):
        ModelConfig(name="m", architecture="cnn-digits", recipe="none")
    with pytest.raises(ValueError, match="architecture: required but missing"):
        ModelConfig(name="m", recipe="none", weights={"path": "w.safetensors", "sha256": "sha256:" + "0" * 64})
    with pytest.raises(ValueError, match="sha256"):
        ModelConfig(name="m", architecture="cnn-digits", recipe="none", weights={"path": "w", "sha256": "abc"})
    m = ModelConfig(name="m", builder="my-net", recipe="none")
    assert m.external and m.recipe is None


@pytest.mark.parametrize("builder", ["os:system", "builtins:exec", "torch.hub:load", "logging:basicConfig", "a/b"])
def test_a_suite_names_no_code_as_builder(builder):
    """`builder` names a registered model builder, never `module:callable`: nothing a suite says is imported."""
    with pytest.raises(ValueError, match="a suite names models, never code"):
        ModelConfig(name="m", builder=builder, recipe="none")


def _write_builder_suite(name: str, builder: str) -> None:
    """``NAME.yaml`` in the working folder: a small digits suite whose one model is brought by ``builder``."""
    suite = {
        "name": name,
        "dataset": {"name": "digits", "splits": {"train": 200, "test": 100}},
        "models": [{"name": "m", "builder": builder, "recipe": "none"}],
        "seeds": [0],
        "attacks": [{"name": "fgsm", "eps": [0.1]}],
    }
    Path(f"{name}.yaml").write_text(yaml.safe_dump(suite))


def test_validate_and_plan_import_nothing_a_suite_names(tmp_path, monkeypatch):
    """The old hole: `builder: pkg:fn` made validate and --plan import `pkg` (running its import side effects)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sideeffect_pkg.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write('imported')\ndef fn(): pass\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.chdir(tmp_path)
    _write_builder_suite("hostile", "sideeffect_pkg:fn")
    assert main(["validate", "hostile.yaml"]) != 0
    assert main(["run", "hostile.yaml", "--plan", "--cache-dir", "cache"]) != 0
    assert not (tmp_path / "ran").exists() and "sideeffect_pkg" not in sys.modules


def test_an_unregistered_builder_name_is_reported_with_close_matches(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _write_builder_suite("typo", "cnn-digit")
    assert main(["validate", "typo.yaml"]) != 0
    err = capsys.readouterr()
    assert "cnn-digits" in err.out + err.err and "builder" in err.out + err.err


@pytest.mark.integration
def test_brought_models_are_transfer_sources_and_targets(tmp_path, monkeypatch, installed_usermodels):
    monkeypatch.chdir(tmp_path)
    import usermodels  # the test package, outside advbench

    from advbench.models import create_model

    # (a) a user's own network: weights saved by the user, built by their entry point
    net, _ = usermodels.small_mlp(num_classes=10, input_shape=(1, 8, 8))
    _train(net)
    (tmp_path / "weights").mkdir()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, "weights/mine.safetensors")
    # (b) a registered architecture trained elsewhere
    cnn = create_model("cnn-digits", num_classes=10, input_shape=(1, 8, 8))
    _train(cnn, steps=60)
    save_file({k: v.contiguous() for k, v in cnn.state_dict().items()}, "weights/cnn.safetensors")

    def digest(p: str) -> str:
        return "sha256:" + sha256_file(p)

    suite = {
        "name": "byo",
        "dataset": {"name": "digits", "splits": {"train": 600, "test": 200}},
        "models": [
            {"name": "baseline", "architecture": "cnn-digits", "recipe": {"epochs": 2, "batch_size": 64}},
            {
                "name": "mine",
                "builder": "small-mlp",
                "recipe": "none",
                "weights": {"path": "weights/mine.safetensors", "sha256": digest("weights/mine.safetensors")},
            },
            {
                "name": "imported",
                "architecture": "cnn-digits",
                "recipe": "none",
                "weights": {"path": "weights/cnn.safetensors", "sha256": digest("weights/cnn.safetensors")},
            },
        ],
        "seeds": [0],
        "attacks": [{"name": "fgsm", "eps": [0.1]}],
        "evaluations": {"transfer": {"n_examples": 100}, "dknn": {"k": 10, "calibration_size": 100, "n_examples": 100}},
        "report": {"output": "reports/byo.md", "plots": False},
    }
    Path("byo.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    assert main(["validate", "byo.yaml"]) == 0
    rc = main(["run", "byo.yaml", "--cache-dir", "cache", "--runs-dir", "runs", "--threads", "1"])
    assert rc == 0
    run = sorted(Path("runs").iterdir())[-1]
    metrics = pd.read_csv(run / "results" / "transfer_metrics.csv")
    pairs = set(zip(metrics["source"], metrics["target"], strict=True))
    for brought in ("mine", "imported"):
        assert (brought, "baseline") in pairs and ("baseline", brought) in pairs and (brought, brought) in pairs
    clean = pd.read_csv(run / "results" / "clean.csv").set_index("model")["test_accuracy"]
    assert clean["mine"] > 0.7 and clean["imported"] > 0.5  # the loaded weights, not a fresh init
    dknn = pd.read_csv(run / "results" / "dknn.csv.gz")
    assert {"mine", "imported"} <= set(dknn["model"])
    manifest = json.loads((run / "manifest.json").read_text())
    ext = manifest["external_models"]
    assert ext["mine"]["sha256"] == digest("weights/mine.safetensors")
    assert ext["mine"]["builder"] == "small-mlp"
    assert "mine" in Path("reports/byo.md").read_text()

    # a changed file is refused, with the digest it now has
    save_file({k: torch.zeros_like(v) for k, v in net.state_dict().items()}, "weights/mine.safetensors")
    assert main(["run", "byo.yaml", "--cache-dir", "cache2", "--runs-dir", "runs", "--threads", "1"]) != 0


def test_weights_path_outside_the_project_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite = {
        "name": "byo",
        "dataset": {"name": "digits"},
        "models": [
            {
                "name": "m",
                "architecture": "cnn-digits",
                "recipe": "none",
                "weights": {"path": "../elsewhere.safetensors", "sha256": "sha256:" + "0" * 64},
            }
        ],
    }
    Path("s.yaml").write_text(yaml.safe_dump(suite))
    assert main(["validate", "s.yaml"]) != 0
