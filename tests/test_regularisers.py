"""Representation regularisers: the registry, each built-in against a float64 brute force, training,
checkpointed state, validation, `advbench list regularisers` and a plugin from an entry point."""

from __future__ import annotations

import importlib
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from advbench.cli.main import main
from advbench.config import RecipeConfig, RegulariserConfig, SNNLConfig
from advbench.errors import ConfigError, UnknownNameError
from advbench.training import (
    REGULARISERS,
    CompositeLoss,
    RegulariserContext,
    create_regulariser,
    init_model,
    load_checkpoint,
    load_regulariser_state,
    save_checkpoint,
    train_model,
)

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN = 256


def _batch(b: int = 12, d: int = 5, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g, dtype=torch.float64)
    y = torch.arange(b) % classes
    return x, y


def _ctx(d: int = 5, classes: int = 3, weight: float = 1.0, layer: str = "h") -> RegulariserContext:
    return RegulariserContext(layers=(layer,), weight=weight, num_classes=classes, dims={layer: d})


# -- registry ---------------------------------------------------------------------------------------


def test_four_builtins_are_registered_and_unknown_names_have_close_matches():
    assert {"snnl", "center", "supcon", "cdd"} <= set(REGULARISERS.list())
    with pytest.raises(UnknownNameError) as exc:
        REGULARISERS.get("centre")
    assert "center" in exc.value.close


def test_list_regularisers_cli_shows_the_builtins(capsys):
    assert main(["list", "regularisers"]) == 0
    out = capsys.readouterr().out
    for name in ("snnl", "center", "supcon", "cdd"):
        assert f"| {name} " in out
    assert "4 regularisers" in out and "alpha=0.5" in out


# -- each built-in against a float64 brute force ----------------------------------------------------


def _snnl_brute(x: np.ndarray, y: np.ndarray, t: float, eps: float = 1e-5) -> float:
    b = len(y)
    total = 0.0
    for i in range(b):
        num = sum(math.exp(-np.sum((x[i] - x[j]) ** 2) / t) for j in range(b) if j != i and y[j] == y[i])
        den = sum(math.exp(-np.sum((x[i] - x[k]) ** 2) / t) for k in range(b) if k != i)
        total += -math.log(eps + num / den)
    return total / b


def test_snnl_regulariser_equals_brute_force():
    x, y = _batch()
    y[-1] = 7  # a point alone in its class: contributes -log(eps)
    reg = create_regulariser("snnl", _ctx(weight=-0.5), {"temperature": "fixed", "T0": 3.0}).double()
    got = reg({"h": x}, y)["h"]
    assert float(got) == pytest.approx(_snnl_brute(x.numpy(), y.numpy(), 3.0), rel=1e-10)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_center_loss_equals_brute_force_and_paper_update(reduction):
    x, y = _batch()
    reg = create_regulariser("center", _ctx(), {"alpha": 0.5, "reduction": reduction}).double()
    c0 = torch.randn(3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    reg.centres["h"].data.copy_(c0)
    got = reg({"h": x}, y)["h"]
    xs, ys, cs = x.numpy(), y.numpy(), c0.numpy()
    want = 0.5 * sum(float(np.sum((xs[i] - cs[ys[i]]) ** 2)) for i in range(len(ys)))
    assert float(got) == pytest.approx(want / (len(ys) if reduction == "mean" else 1), rel=1e-12)
    # Wen et al. eq. 4: c_j <- c_j - alpha * sum_{y_i = j} (c_j - x_i) / (1 + n_j)
    for j in range(3):
        members = [i for i in range(len(ys)) if ys[i] == j]
        delta = sum(cs[j] - xs[i] for i in members) / (1 + len(members))
        np.testing.assert_allclose(reg.centres["h"].detach().numpy()[j], cs[j] - 0.5 * delta, rtol=1e-12)
    # the gradient reaches the features, not the centres
    xg = x.clone().requires_grad_(True)
    reg({"h": xg}, y)["h"].backward()
    assert xg.grad is not None and reg.centres["h"].grad is None


def test_center_loss_sgd_centres_see_their_own_gradient_whatever_the_weight():
    x, y = _batch()
    reg = create_regulariser("center", _ctx(weight=-4.0), {"update": "sgd", "alpha": 0.1}).double()
    term = reg({"h": x}, y)["h"]
    (reg.weight * term).backward()
    # dL_C/dc_j = sum_{y_i = j} (c_j - x_i) = -sum x_i at c = 0, independent of the weight
    want = np.stack([-x.numpy()[y.numpy() == j].sum(0) for j in range(3)])
    np.testing.assert_allclose(reg.centres["h"].grad.numpy(), want, rtol=1e-12)
    opt = reg.make_optimizer()
    assert isinstance(opt, torch.optim.SGD)


def _supcon_brute(x: np.ndarray, y: np.ndarray, tau: float) -> tuple[float, int]:
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    b = len(y)
    losses = []
    for i in range(b):
        pos = [p for p in range(b) if p != i and y[p] == y[i]]
        if not pos:
            continue
        den = sum(math.exp(z[i] @ z[a] / tau) for a in range(b) if a != i)
        losses.append(-sum(math.log(math.exp(z[i] @ z[p] / tau) / den) for p in pos) / len(pos))
    return float(np.sum(losses)), len(losses)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_supcon_equals_khosla_eq2_brute_force(reduction):
    x, y = _batch(b=10)
    y[-1] = 9  # an anchor without a positive is left out
    reg = create_regulariser("supcon", _ctx(), {"temperature": 0.2, "reduction": reduction})
    got = float(reg({"h": x}, y)["h"].detach())
    total, kept = _supcon_brute(x.numpy(), y.numpy(), 0.2)
    assert kept == 9
    assert got == pytest.approx(total / kept if reduction == "mean" else total, rel=1e-10)


def _mcdd_brute(h, y, mu, log_s, b, lam):
    d = h.shape[1]
    cls = dd = 0.0
    for i in range(len(y)):
        dist = [np.sum((h[i] - mu[k]) ** 2) / (2 * math.exp(2 * log_s[k])) + d * log_s[k] for k in range(len(mu))]
        logits = [-dist[k] + b[k] for k in range(len(mu))]
        cls += -(logits[y[i]] - math.log(sum(math.exp(v) for v in logits)))
        dd += dist[y[i]]
    return (cls + lam * dd) / len(y), cls / len(y), dd / len(y)


def test_class_data_description_equals_brute_force_and_initialises_centres_at_class_means():
    x, y = _batch()
    reg = create_regulariser("cdd", _ctx(), {"lam": 0.3}).double()
    g = torch.Generator().manual_seed(2)
    reg.log_sigma["h"].data.copy_(0.3 * torch.randn(3, generator=g, dtype=torch.float64))
    reg.bias["h"].data.copy_(torch.randn(3, generator=g, dtype=torch.float64))
    got = float(reg({"h": x}, y)["h"].detach())
    mu = reg.centres["h"].detach().numpy()
    for j in range(3):  # the first batch sets every centre to its class mean
        np.testing.assert_allclose(mu[j], x.numpy()[y.numpy() == j].mean(0), rtol=1e-12)
    want, cls, dd = _mcdd_brute(
        x.numpy(), y.numpy(), mu, reg.log_sigma["h"].detach().numpy(), reg.bias["h"].detach().numpy(), 0.3
    )
    assert got == pytest.approx(want, rel=1e-10)
    assert reg.metrics["cls/h"] == pytest.approx(cls, rel=1e-10) and reg.metrics["dd/h"] == pytest.approx(dd, rel=1e-10)
    # a second batch leaves the centres where they are (they are now learned)
    reg({"h": x + 1.0}, y)
    np.testing.assert_array_equal(reg.centres["h"].detach().numpy(), mu)


def test_bad_parameters_are_refused_with_the_value():
    with pytest.raises(ValueError, match=r"alpha.*got 2"):
        create_regulariser("center", _ctx(), {"alpha": 2.0})
    with pytest.raises(ValueError, match="temperature must be > 0, got -1"):
        create_regulariser("supcon", _ctx(), {"temperature": -1.0})
    with pytest.raises(ValueError, match="non-zero"):
        create_regulariser("supcon", _ctx(weight=0.0))


# -- training ----------------------------------------------------------------------------------------


def _fresh(splits, seed: int = 0):
    return init_model(
        "cnn-digits",
        params={},
        num_classes=splits.num_classes,
        input_shape=splits.input_shape,
        seed=seed,
        x_train=splits.train.x,
    )


def _recipe(*regs: RegulariserConfig, alpha: float = 0.0) -> RecipeConfig:
    return RecipeConfig(epochs=1, batch_size=64, lr=3e-3, snnl=SNNLConfig(alpha=alpha), regularisers=list(regs))


@pytest.mark.parametrize(
    ("name", "weight", "params"),
    [
        ("center", 0.01, {}),
        ("center", 0.01, {"update": "sgd"}),
        ("supcon", 0.5, {}),
        ("cdd", 0.1, {}),
        ("snnl", -0.1, {"temperature": "learned"}),
    ],
)
def test_each_builtin_trains_logs_and_checkpoints_its_state(digits_splits, tmp_path, name, weight, params):
    x, y = digits_splits.train.x[:N_TRAIN], digits_splits.train.y[:N_TRAIN]
    reg = RegulariserConfig(name=name, weight=weight, params=params)
    base = train_model(_fresh(digits_splits), x, y, _recipe(), seed=0, probe=None)
    res = train_model(_fresh(digits_splits), x, y, _recipe(reg), seed=0, probe=None)
    assert res.initial_weights_hash == base.initial_weights_hash and res.batch_order_hash == base.batch_order_hash
    assert res.final_weights_hash != base.final_weights_hash  # the term changed the training
    layer = "conv1" if name == "snnl" else "fc1"  # snnl reads every hidden layer, the others the last
    assert math.isfinite(res.final[f"{name}/{layer}"])
    assert res.final["loss"] != pytest.approx(res.final["ce"])
    state = res.regulariser_state
    if not (name == "supcon"):
        assert state, "a regulariser with centres or temperatures has a state"
    save_checkpoint(res.model, tmp_path / "ck", {"params": {}}, regularisers=state)
    loaded = load_regulariser_state(tmp_path / "ck")
    assert loaded.keys() == state.keys()
    for k in state:
        torch.testing.assert_close(loaded[k], state[k].cpu())
    load_checkpoint(tmp_path / "ck")  # the model still loads


def test_regulariser_state_is_verified(digits_splits, tmp_path):
    x, y = digits_splits.train.x[:N_TRAIN], digits_splits.train.y[:N_TRAIN]
    res = train_model(
        _fresh(digits_splits), x, y, _recipe(RegulariserConfig(name="cdd", weight=0.1)), seed=0, probe=None
    )
    save_checkpoint(res.model, tmp_path / "ck", {"params": {}}, regularisers=res.regulariser_state)
    assert any(k.startswith("cdd.centres.fc1") for k in load_regulariser_state(tmp_path / "ck"))
    (tmp_path / "ck" / "regularisers.safetensors").write_bytes(b"\x80\x04junk")
    from advbench.errors import CacheError

    with pytest.raises(CacheError, match=r"regularisers\.safetensors has sha256"):
        load_regulariser_state(tmp_path / "ck")


def test_snnl_block_and_snnl_entry_give_the_same_training(digits_splits):
    """The `snnl:` block maps to the snnl regulariser: the same loss, bit for bit."""
    x, y = digits_splits.train.x[:N_TRAIN], digits_splits.train.y[:N_TRAIN]
    block = train_model(_fresh(digits_splits), x, y, _recipe(alpha=-0.1), seed=0, probe=None)
    entry = train_model(
        _fresh(digits_splits), x, y, _recipe(RegulariserConfig(name="snnl", weight=-0.1)), seed=0, probe=None
    )
    assert block.final_weights_hash == entry.final_weights_hash


def test_composite_loss_adds_weight_times_each_term(digits_splits):
    model = _fresh(digits_splits)
    x, y = digits_splits.train.x[:32], digits_splits.train.y[:32]
    feats = model.features(x, ["fc1"])
    dims = {"fc1": feats["fc1"][0].numel()}
    ctx = RegulariserContext(layers=("fc1",), weight=0.25, num_classes=10, dims=dims)
    reg = create_regulariser("supcon", ctx)
    terms = CompositeLoss(SNNLConfig(alpha=0.0), model.hidden_layers, {"supcon": reg})(model, x, y)
    expected = terms.ce + 0.25 * terms.regularisers["supcon/fc1"]
    assert float(terms.loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)


# -- a regulariser from an installed package (entry point) ------------------------------------------


PLUGIN_MODULE = '''
"""A tiny regulariser from a separate package: the mean squared norm of the representation."""
from advbench.training import Regulariser


class NormPenalty(Regulariser):
    default_layers = "last"

    def __init__(self, ctx, *, power: float = 2.0):
        super().__init__(ctx)
        self.power = power

    def forward(self, feats, y):
        return {layer: feats[layer].flatten(1).norm(dim=1).pow(self.power).mean() for layer in self.layers}
'''


@pytest.fixture
def installed_regulariser_plugin(tmp_path, monkeypatch):
    """A distribution on sys.path with a dist-info declaring `advbench.regularisers: norm-penalty`."""
    site = tmp_path / "site"
    (site / "advbench_norm_plugin").mkdir(parents=True)
    (site / "advbench_norm_plugin" / "__init__.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    info = site / "advbench_norm_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: advbench-norm-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[advbench.regularisers]\nnorm-penalty = advbench_norm_plugin:NormPenalty\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.setattr(REGULARISERS, "_loaded", False)  # read the entry points again
    yield
    REGULARISERS.unregister("norm-penalty")
    sys.modules.pop("advbench_norm_plugin", None)


def test_regulariser_from_an_entry_point_is_listed_validated_and_trains(
    installed_regulariser_plugin, digits_splits, tmp_path
):
    entry = REGULARISERS.entry("norm-penalty")
    assert entry.source == "advbench-norm-plugin"
    from advbench.cli.list_cmd import rows

    assert any(r["name"] == "norm-penalty" and "power=2.0" in r["parameters"] for r in rows("regularisers"))
    x, y = digits_splits.train.x[:N_TRAIN], digits_splits.train.y[:N_TRAIN]
    recipe = _recipe(RegulariserConfig(name="norm-penalty", weight=1e-3, params={"power": 1.0}))
    base = train_model(_fresh(digits_splits), x, y, _recipe(), seed=0, probe=None)
    res = train_model(_fresh(digits_splits), x, y, recipe, seed=0, probe=None)
    assert math.isfinite(res.final["norm-penalty/fc1"]) and res.final["norm-penalty/fc1"] > 0
    assert res.final_weights_hash != base.final_weights_hash
    # and a suite can name it (validated against its constructor)
    assert _validate(tmp_path, "{name: norm-penalty, weight: 0.001, params: {power: 1.0}}") == ""
    assert "unknown parameter" in _validate(tmp_path, "{name: norm-penalty, weight: 0.001, params: {p: 1.0}}")


GOOD_SUITE = """\
name: reg
dataset:
  name: digits
  splits: {train: 500, test: 200}
models:
  - name: baseline
    architecture: cnn-digits
  - name: regularised
    architecture: cnn-digits
    recipe: {regularisers: [REG]}
seeds: [0]
"""


# -- validation ---------------------------------------------------------------------------------------


def _validate(tmp_path, reg: str) -> str:
    from advbench.suite import load_suite

    p = tmp_path / "s.yaml"
    p.write_text(GOOD_SUITE.replace("REG", reg))
    try:
        load_suite(p)
    except ConfigError as exc:
        return str(exc)
    return ""


def test_valid_regulariser_entries_pass(tmp_path):
    assert _validate(tmp_path, "{name: center, weight: 0.01, layers: [fc1], params: {alpha: 0.3}}") == ""
    assert _validate(tmp_path, "{name: cdd, weight: 0.1}") == ""


@pytest.mark.parametrize(
    ("reg", "expected"),
    [
        ("{name: centre, weight: 0.01}", "did you mean 'center'"),
        ("{name: center, weight: 0.01, params: {alpah: 0.3}}", "unknown parameter; did you mean 'alpha'"),
        ("{name: center, weight: 0.01, params: {alpha: fast}}", "alpha"),
        ("{name: supcon, weight: 0.0}", "non-zero weight"),
        ("{name: supcon, weight: 0.1, layers: [fc9]}", "expected a hidden layer of 'cnn-digits'"),
        ("{name: supcon, weight: 0.1, layers: [logits]}", "never the logits"),
        ("{name: center, weight: 0.1, params: {ctx: 1}}", "advbench sets it"),
    ],
)
def test_bad_regulariser_entries_are_reported(tmp_path, reg, expected):
    msg = _validate(tmp_path, reg)
    assert expected in msg and "regularisers" in msg, msg


def test_snnl_twice_and_a_name_twice_are_reported(tmp_path):
    text = GOOD_SUITE.replace(
        "recipe: {regularisers: [REG]}",
        "recipe: {snnl: {alpha: -0.1}, regularisers: [{name: snnl, weight: 0.1}, {name: snnl, weight: 0.2}]}",
    )
    p = tmp_path / "s.yaml"
    p.write_text(text)
    from advbench.suite import load_suite

    with pytest.raises(ConfigError) as exc:
        load_suite(p)
    assert "SNNL would be added twice" in str(exc.value) and "already used by regularisers[0]" in str(exc.value)


def test_regularisers_suite_plan(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    args = ["run", "suites/regularisers.yaml", "--plan", "--cache-dir", str(tmp_path / "cache")]
    assert main([*args, "--runs-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    for model in ("baseline", "entangled", "center", "supcon", "cdd"):
        assert f"train {model} seed=0" in out


# -- the report's regulariser terms ---------------------------------------------------------------------


def test_regulariser_summary_has_last_epoch_terms_only_for_models_with_them():
    import pandas as pd

    from advbench.analysis.results import Results

    def hist(model, seed, **cols):
        return pd.DataFrame({"model": model, "seed": seed, "epoch": [1, 2], "loss": [1.0, 0.5], **cols})

    nan = [math.nan, math.nan]
    training = pd.concat(
        [
            hist("baseline", 0, **{"snnl/fc1": nan, "entanglement/fc1": [0.3, 0.2]}),
            hist("center", 0, **{"center/fc1": [4.0, 2.0], "entanglement/fc1": [0.3, 0.1]}),
            hist("center", 1, **{"center/fc1": [5.0, 4.0], "entanglement/fc1": [0.3, 0.1]}),
        ],
        ignore_index=True,
    )
    empty = pd.DataFrame()
    res = Results(
        suite={},
        outcomes=empty,
        metrics=empty,
        training=training,
        clean=empty,
        dknn=empty,
        dknn_examples=empty,
        gradient_flags=empty,
    )
    summ = res.regulariser_summary()
    assert summ[["model", "term", "n_seeds"]].values.tolist() == [["center", "center/fc1", 2]]
    assert summ["mean"].iloc[0] == pytest.approx(3.0)  # last epochs: 2.0 and 4.0
    assert summ["ci_low"].iloc[0] < 3.0 < summ["ci_high"].iloc[0]
    res.training = training.drop(columns="center/fc1")
    assert res.regulariser_summary().empty


PLUGIN_SUITE = """\
name: reg-plugin
dataset:
  name: digits
  splits: {train: 300, test: 100}
models:
  - name: baseline
    architecture: cnn-digits
    recipe: {epochs: 2, batch_size: 64, lr: 0.003}
  - name: normed
    architecture: cnn-digits
    recipe: {epochs: 2, batch_size: 64, lr: 0.003, regularisers: [{name: norm-penalty, weight: 0.001}]}
seeds: [0]
attacks:
  - {name: fgsm, eps: [0.1]}
evaluations:
  transfer: {n_examples: 60}
  dknn: {k: 10, calibration_size: 60, n_examples: 60}
"""


@pytest.mark.integration
def test_plugin_regulariser_trains_through_the_cli_and_appears_in_the_report(installed_regulariser_plugin, tmp_path):
    import os

    suite = tmp_path / "reg-plugin.yaml"
    suite.write_text(PLUGIN_SUITE)
    site = next(p for p in sys.path if p.endswith("site") and "advbench_norm_plugin" in os.listdir(p))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([site, str(ROOT), os.environ.get("PYTHONPATH", "")])}
    report = tmp_path / "report.md"
    args = ["run", str(suite), "--threads", "1", "--report", str(report)]
    args += ["--cache-dir", str(tmp_path / "cache"), "--runs-dir", str(tmp_path / "runs")]
    proc = subprocess.run(
        [sys.executable, "-m", "advbench.cli.main", *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    text = report.read_text()
    section = text[text.index("## Regulariser terms") :]
    section = section[: section.index("\n## ")]
    header, _, *rows = [line for line in section.splitlines() if line.startswith("|")]
    assert "norm-penalty/fc1" in header
    assert len(rows) == 1 and rows[0].split("|")[1].strip() == "normed"
    value = float(rows[0].split("|")[2].split()[0])
    assert math.isfinite(value) and value > 0
    # and the Mahalanobis detector sits beside credibility and the MSP
    assert "Mahalanobis AUROC ± SE" in text
