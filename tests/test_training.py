"""Paired training: shared initial weights and batches, determinism, temperatures, errors, checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import advbench.training.loss as loss_module
from advbench.config import RecipeConfig, SNNLConfig
from advbench.errors import CacheError, NonFiniteLossError
from advbench.training import (
    CompositeLoss,
    batch_order,
    init_model,
    load_checkpoint,
    save_checkpoint,
    snnl,
    train_model,
    weights_hash,
)
from advbench.training.checkpoint import card_digest

N_TRAIN = 256


def recipe(alpha: float = 0.0, *, epochs: int = 1, temperature: str = "learned", **snnl_kw) -> RecipeConfig:
    return RecipeConfig(
        epochs=epochs,
        batch_size=64,
        lr=3e-3,
        snnl=SNNLConfig(alpha=alpha, temperature=temperature, **snnl_kw),  # type: ignore[arg-type]
    )


def fresh(splits, seed: int = 0):
    return init_model(
        "cnn-digits",
        params={},
        num_classes=splits.num_classes,
        input_shape=splits.input_shape,
        seed=seed,
        x_train=splits.train.x,
    )


def run(splits, alpha: float, *, seed: int = 0, epochs: int = 1, probe: bool = False, **kw):
    x, y = splits.train.x[:N_TRAIN], splits.train.y[:N_TRAIN]
    p = (splits.test.x[:200], splits.test.y[:200]) if probe else None
    return train_model(
        fresh(splits, seed), x, y, recipe(alpha, epochs=epochs, **kw), seed=seed, probe=p, name=f"alpha={alpha}"
    )


# -- pairs ----------------------------------------------------------------------------------------


def test_initial_weights_depend_on_seed_only(digits_splits):
    a, b, c = fresh(digits_splits, 0), fresh(digits_splits, 0), fresh(digits_splits, 1)
    assert weights_hash(a) == weights_hash(b) != weights_hash(c)
    assert torch.equal(a.mean, b.mean) and float(a.std.flatten()[0]) != 1.0
    state = torch.random.get_rng_state()
    fresh(digits_splits, 3)
    assert torch.equal(state, torch.random.get_rng_state()), "init_model must not touch the global RNG"


def test_batch_order_depends_on_seed_only():
    one = [torch.cat(e) for e in batch_order(100, batch_size=32, epochs=2, seed=0)]
    two = [torch.cat(e) for e in batch_order(100, batch_size=32, epochs=2, seed=0)]
    other = [torch.cat(e) for e in batch_order(100, batch_size=32, epochs=2, seed=1)]
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    assert not torch.equal(one[0], other[0]) and not torch.equal(one[0], one[1])
    assert sorted(one[0].tolist()) == list(range(100))
    # a trailing batch of one (no SNNL possible) is dropped
    assert [len(b) for b in next(batch_order(65, batch_size=32, epochs=1, seed=0))] == [32, 32]


def test_a_pair_shares_initial_weights_and_batches(digits_splits):
    base = run(digits_splits, 0.0)
    ent = run(digits_splits, -1.0)
    assert base.initial_weights_hash == ent.initial_weights_hash
    assert base.batch_order_hash == ent.batch_order_hash
    assert base.final_weights_hash != ent.final_weights_hash
    other = run(digits_splits, 0.0, seed=1)
    assert other.initial_weights_hash != base.initial_weights_hash
    assert other.batch_order_hash != base.batch_order_hash


def test_same_seed_is_bit_identical(digits_splits):
    one = run(digits_splits, -1.0, temperature="reference")
    two = run(digits_splits, -1.0, temperature="reference")
    assert one.final_weights_hash == two.final_weights_hash
    for p, q in zip(one.model.parameters(), two.model.parameters()):
        assert torch.equal(p, q)
    assert one.history[0]["loss"] == two.history[0]["loss"]


def test_history_records_terms_temperatures_and_probe(digits_splits):
    res = run(digits_splits, -1.0, epochs=2, probe=True)
    assert [r["epoch"] for r in res.history] == [1, 2]
    rec = res.final
    for layer in ("conv1", "conv2", "fc1"):
        for key in ("snnl", "temperature", "floor", "entanglement", "entanglement_T"):
            assert math.isfinite(rec[f"{key}/{layer}"]), key
        assert 0.0 <= rec[f"floor/{layer}"] <= 1.0
        assert rec[f"temperature/{layer}"] != 100.0  # the learned temperature moved
    assert "logits" not in "".join(rec)
    assert 0.0 <= rec["train_accuracy"] <= 1.0 and rec["seconds"] > 0
    assert set(res.initial_entanglement) == {"conv1", "conv2", "fc1"}
    base = run(digits_splits, 0.0)
    assert math.isnan(base.final["snnl/fc1"]) and base.final["loss"] == base.final["ce"]


def test_regularised_layers_can_be_chosen(digits_splits):
    res = run(digits_splits, -1.0, layers=["fc1"])
    assert "snnl/fc1" in res.final and "snnl/conv1" not in res.final
    with pytest.raises(ValueError, match="not hidden layers"):
        run(digits_splits, -1.0, layers=["logits"])


# -- the composite loss and its temperatures ------------------------------------------------------


def _batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(32, 1, 8, 8, generator=g), torch.arange(32) % 4


@pytest.mark.parametrize("alpha", [-10.0, 0.5])
def test_learned_temperature_minimises_snnl_whatever_the_sign_of_alpha(digits_splits, alpha):
    model = fresh(digits_splits)
    x, y = _batch()
    loss = CompositeLoss(SNNLConfig(alpha=alpha, layers=["fc1"], T0=3.0), ["fc1"])
    terms = loss(model, x, y)
    terms.loss.backward()
    log_t = loss.temperature("fc1").log_t
    h = model.features(x, ["fc1"])["fc1"].detach()
    lt = torch.tensor(math.log(3.0), requires_grad=True)
    (expected,) = torch.autograd.grad(snnl(h, y, lt.exp()), lt)
    torch.testing.assert_close(log_t.grad, expected, rtol=1e-4, atol=1e-6)
    # and the network's gradient is that of CE + alpha * SNNL
    w = model.blocks["fc1"][1].weight
    model.zero_grad()
    feats = model.features(x)
    ref = torch.nn.functional.cross_entropy(feats["logits"], y) + alpha * snnl(feats["fc1"], y, 3.0)
    ref.backward()
    grad_ref = w.grad.clone()
    model.zero_grad()
    loss(model, x, y).loss.backward()
    torch.testing.assert_close(w.grad, grad_ref, rtol=1e-4, atol=1e-6)


def test_reference_temperature_takes_one_plain_step(digits_splits):
    model = fresh(digits_splits)
    x, y = _batch()
    cfg = SNNLConfig(alpha=-10.0, temperature="reference", T0=100.0, temperature_lr=0.1)
    loss = CompositeLoss(cfg, ["fc1"])
    assert loss.temperature_parameters() == []
    h = model.features(x, ["fc1"])["fc1"].detach()
    t = torch.tensor(1.0, requires_grad=True)
    (g,) = torch.autograd.grad(snnl(h, y, 100.0 / t), t)
    terms = loss(model, x, y)
    expected_T = 100.0 / (1.0 - 0.1 * float(g))
    assert terms.temperature["fc1"] == pytest.approx(expected_T, rel=1e-5)
    assert loss.temperature("fc1").value == pytest.approx(expected_T, rel=1e-5)
    # the loss uses the updated T, as a constant
    assert float(terms.snnl["fc1"].detach()) == pytest.approx(float(snnl(h, y, expected_T)), rel=1e-5)


def test_fixed_temperature_stays(digits_splits):
    model = fresh(digits_splits)
    x, y = _batch()
    loss = CompositeLoss(SNNLConfig(alpha=1.0, temperature="fixed", T0=7.0), model.hidden_layers)
    assert loss(model, x, y).temperature == {"conv1": 7.0, "conv2": 7.0, "fc1": 7.0}


def test_baseline_skips_the_snnl(digits_splits, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the SNNL must not be computed when alpha == 0")

    monkeypatch.setattr(loss_module, "pairwise_distances", boom)
    model = fresh(digits_splits)
    x, y = _batch()
    terms = CompositeLoss(SNNLConfig(alpha=0.0), model.hidden_layers)(model, x, y)
    assert terms.snnl == {} and terms.loss is terms.ce


# -- failures -------------------------------------------------------------------------------------


def test_non_finite_ce_names_model_epoch_step_and_term(digits_splits):
    x, y = digits_splits.train.x[:N_TRAIN].clone(), digits_splits.train.y[:N_TRAIN]
    x[:] = float("nan")
    model = fresh(digits_splits)
    with pytest.raises(NonFiniteLossError, match=r"'victim'.*cross-entropy.*epoch 1, step 0"):
        train_model(model, x, y, recipe(0.0), seed=0, probe=None, name="victim")


def test_non_finite_snnl_names_the_layer(digits_splits, monkeypatch):
    real = loss_module.snnl_rows
    calls = []

    def nan_on_second_layer(d, t, eye, same, *, eps):
        value, shift = real(d, t, eye, same, eps=eps)
        calls.append(1)
        return (value * float("nan"), shift) if len(calls) == 2 else (value, shift)

    monkeypatch.setattr(loss_module, "snnl_rows", nan_on_second_layer)
    with pytest.raises(NonFiniteLossError, match=r"SNNL of layer 'conv2'.*epoch 1, step 0"):
        run(digits_splits, -1.0, temperature="fixed")


# -- checkpoints ----------------------------------------------------------------------------------


def _card() -> dict:
    return {"params": {}, "recipe": recipe(-1.0), "seed": 0, "data_sha256": "abc", "metrics": {"test_accuracy": 0.5}}


def test_checkpoint_round_trip(digits_splits, tmp_path):
    model = fresh(digits_splits)
    path = save_checkpoint(model, tmp_path / "ck", _card())
    assert sorted(p.name for p in Path(path).iterdir()) == ["card.json", "weights.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temp dir left behind
    loaded, card = load_checkpoint(path)
    assert weights_hash(loaded) == weights_hash(model)
    assert card["architecture"] == "cnn-digits" and card["recipe"]["snnl"]["alpha"] == -1.0
    assert {"torch", "safetensors", "advbench"} <= set(card["library_versions"])
    x = digits_splits.test.x[:8]
    assert torch.equal(loaded(x), model.eval()(x))
    with pytest.raises(CacheError, match="already exists"):
        save_checkpoint(model, path, _card())
    save_checkpoint(model, path, _card(), overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_checkpoint_refuses_corruption(digits_splits, tmp_path):
    path = Path(save_checkpoint(fresh(digits_splits), tmp_path / "ck", _card()))
    weights = path / "weights.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(CacheError, match="sha256"):
        load_checkpoint(path)
    (path / "card.json").write_text("{not json")
    with pytest.raises(CacheError, match="malformed"):
        load_checkpoint(path)
    weights.unlink()
    with pytest.raises(CacheError, match="missing"):
        load_checkpoint(path)


def test_checkpoint_refuses_weights_of_another_architecture(digits_splits, tmp_path):
    path = Path(save_checkpoint(fresh(digits_splits), tmp_path / "ck", _card()))
    card = json.loads((path / "card.json").read_text())
    card["params"] = {"fc": 32}
    card["card_sha256"] = card_digest(card)  # a consistent card, so the weights check is what refuses it
    (path / "card.json").write_text(json.dumps(card))
    with pytest.raises(CacheError, match="do not fit"):
        load_checkpoint(path)


def test_failed_save_leaves_nothing(digits_splits, tmp_path):
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(fresh(digits_splits), tmp_path / "ck", {"params": {}, "bad": object()})
    assert list(tmp_path.iterdir()) == []
