"""advbench.attacks.contract: hostile attack plugins. In-place writes, global state, hooks, exits and hangs
fail the attack that did them, by name, and leave nothing behind for the next cell."""

from __future__ import annotations

import sys
import time

import pytest
import torch
from torch import nn

from advbench.attacks.base import Attack, ThreatModel, generate
from advbench.attacks.contract import (
    AttackContractError,
    AttackTimeoutError,
    GlobalState,
    run_with_time_limit,
)
from advbench.errors import AdvbenchError, ThreatModelError

THREAT = ThreatModel(eps=0.1)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.bn = nn.BatchNorm1d(3)
        self.register_buffer("scratch", torch.zeros(3), persistent=False)

    def forward(self, x):
        return self.bn(self.fc(x.flatten(1)))


def _data(n: int = 6):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 4, generator=g) * 0.8 + 0.1, torch.randint(0, 3, (n,), generator=g)


def _make(body):
    class Plugin(Attack):
        def run(self, model, x, y, threat, generator):
            return body(model, x, y, threat)

    Plugin.__name__ = body.__name__
    return Plugin()


def _noop(model, x, y, threat):
    return x.clone()


# -- inputs, labels, weights --------------------------------------------------------------------


def test_in_place_change_of_x_is_refused_and_the_callers_data_is_intact():
    def adds_in_place(model, x, y, threat):
        x.add_(0.5)  # the example: 0.5 away, then "returns" it at distance 0
        return x

    x, y = _data()
    keep = x.clone()
    with pytest.raises(AttackContractError, match=r"adds_in_place\(\) changed its input x in place.*0\.5"):
        _make(adds_in_place)(_Net(), x, y, THREAT)
    assert torch.equal(x, keep)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda x, y: x.mul_(0.0),
        lambda x, y: x[0].fill_(0.0),  # a single example, through a view
        lambda x, y: x.data.add_(1e-7),  # tiny, through .data: still a change
        lambda x, y: y.fill_(0),  # labels, so "success" would be measured against wrong labels
        lambda x, y: y.add_(1),
    ],
)
def test_every_in_place_write_is_seen(mutate):
    def writes(model, x, y, threat):
        out = x.clone()
        mutate(x, y)
        return out

    x, y = _data()
    y = (y + 1) % 3  # no all-zero labels, so y.fill_(0) is a change
    with pytest.raises(AttackContractError, match="in place"):
        _make(writes)(_Net(), x, y, THREAT)


def test_generate_does_not_let_an_attack_corrupt_the_test_set():
    def adds_in_place(model, x, y, threat):
        x.add_(0.05)
        return x

    x, y = _data(10)
    keep = x.clone()
    with pytest.raises(AttackContractError):
        generate(_Net(), _make(adds_in_place), x, y, THREAT, batch_size=4)
    assert torch.equal(x, keep)


@pytest.mark.parametrize("where", ["weight", "bn running_mean", "non-persistent buffer", "new parameter"])
def test_model_changes_are_restored_and_named(where):
    def edits_model(model, x, y, threat):
        with torch.no_grad():
            if where == "weight":
                model.fc.weight.add_(1.0)
            elif where == "bn running_mean":
                model.bn.running_mean.add_(1.0)
            elif where == "non-persistent buffer":
                model.scratch.add_(1.0)
            else:
                model.fc.extra = nn.Parameter(torch.ones(1))
        return x.clone()

    net = _Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(AttackContractError, match=r"edits_model\(\) modified the model") as info:
        _make(edits_model)(net, *_data(), THREAT)
    assert "restored" in str(info.value)
    for k, v in before.items():
        assert torch.equal(net.state_dict()[k], v)
    assert torch.equal(net.scratch, torch.zeros(3))


def test_weights_are_restored_even_when_the_attack_then_raises():
    def edits_then_raises(model, x, y, threat):
        with torch.no_grad():
            model.fc.weight.zero_()
        raise RuntimeError("library failure")

    net = _Net()
    w = net.fc.weight.detach().clone()
    with pytest.raises(RuntimeError, match="library failure"):
        _make(edits_then_raises)(net, *_data(), THREAT)
    assert torch.equal(net.fc.weight, w)


def test_contract_errors_are_threat_model_errors():
    assert issubclass(AttackContractError, ThreatModelError) and issubclass(AttackContractError, AdvbenchError)


# -- global state -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda m: torch.set_grad_enabled(False), "grad mode"),
        (lambda m: torch.set_default_dtype(torch.float64), "default dtype"),
        (lambda m: torch.set_num_threads(max(1, torch.get_num_threads() + 1)), "thread count"),
        (lambda m: torch.use_deterministic_algorithms(True), "deterministic algorithms"),
        (lambda m: torch.set_anomaly_enabled(True), "anomaly detection"),
        (lambda m: setattr(torch.backends.cudnn, "benchmark", not torch.backends.cudnn.benchmark), "cudnn.benchmark"),
        (lambda m: torch.set_float32_matmul_precision("medium"), "matmul precision"),
        (lambda m: m.fc.register_forward_hook(lambda *a: None), "forward hooks on module 'fc'"),
        (lambda m: m.register_forward_pre_hook(lambda *a: None), "forward pre hooks"),
        (lambda m: m.fc.register_full_backward_hook(lambda *a: None), "backward hooks"),
        (lambda m: nn.modules.module.register_module_forward_hook(lambda *a: None), "global module hooks"),
    ],
)
def test_global_state_changes_fail_the_attack_and_are_restored(change, words):
    def leaves_state(model, x, y, threat):
        change(model)
        return x.clone()

    net = _Net()
    before = GlobalState.take(net)
    with pytest.raises(AttackContractError, match=r"leaves_state\(\) changed global state") as info:
        _make(leaves_state)(net, *_data(), THREAT)
    assert words in str(info.value)
    assert GlobalState.take(net).restore() == [] and before.restore() == []
    # the next, innocent attack runs cleanly
    _make(_noop)(net, *_data(), THREAT)


def test_an_attack_that_removes_an_existing_hook_is_caught_and_the_hook_comes_back():
    net = _Net()
    seen = []
    net.fc.register_forward_hook(lambda *a: seen.append(1))

    def removes(model, x, y, threat):
        model.fc._forward_hooks.clear()
        return x.clone()

    with pytest.raises(AttackContractError, match="1 removed"):
        _make(removes)(net, *_data(), THREAT)
    seen.clear()
    net(torch.rand(2, 4))
    assert seen == [1]


def test_using_the_rng_and_local_grad_mode_is_fine():
    def polite(model, x, y, threat):
        torch.manual_seed(3)  # RNG use is allowed
        with torch.enable_grad():
            x_ = x.clone().requires_grad_(True)
            model(x_).sum().backward()
        with torch.no_grad():
            return (x + threat.eps * torch.rand_like(x).sign()).clamp(0, 1)

    result = _make(polite)(_Net(), *_data(), THREAT)
    assert result.x_adv.shape == (6, 4)


# -- exits --------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 1, None, "bye"])
def test_sys_exit_is_the_attacks_failure(code):
    def exits(model, x, y, threat):
        sys.exit(code)

    with pytest.raises(AttackContractError, match=r"exits\(\) called sys.exit"):
        _make(exits)(_Net(), *_data(), THREAT)


def test_keyboard_interrupt_still_propagates_and_state_is_restored():
    def interrupted(model, x, y, threat):
        torch.set_grad_enabled(False)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _make(interrupted)(_Net(), *_data(), THREAT)
    assert torch.is_grad_enabled()


# -- a time limit a plugin cannot swallow -------------------------------------------------------


def test_a_plugin_that_swallows_exceptions_is_killed_at_the_time_limit():
    def stubborn():
        while True:
            try:
                time.sleep(60)
            except BaseException:  # swallows everything, even KeyboardInterrupt
                pass

    start = time.monotonic()
    with pytest.raises(AttackTimeoutError, match=r"stubborn attack ran past its time limit of 1 s"):
        run_with_time_limit(stubborn, timeout_s=1.0, name="stubborn attack")
    assert time.monotonic() - start < 15


def test_results_come_back_through_safetensors():
    x, _ = _data()
    net = _Net().eval()
    threads = torch.get_num_threads()

    def work():
        return {"x_adv": x + 0.01, "pred": net(x).argmax(1)}

    torch.set_num_threads(2)  # the parent used several threads (forking that used to deadlock the child)
    try:
        net(torch.rand(4096, 4))
        out = run_with_time_limit(work, timeout_s=60, name="pgd")
    finally:
        torch.set_num_threads(threads)
    assert torch.allclose(out["x_adv"], x + 0.01) and out["pred"].dtype == torch.int64


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (lambda: 1 / 0, "ZeroDivisionError: division by zero"),
        (lambda: sys.exit(0), "SystemExit"),
        (lambda: "not tensors", "expected a dict of str -> Tensor"),
        (lambda: {"x": [1, 2]}, "expected a dict of str -> Tensor"),
    ],
)
def test_child_failures_name_the_plugin(body, words):
    with pytest.raises(AdvbenchError, match="my-attack") as info:
        run_with_time_limit(body, timeout_s=60, name="my-attack")
    assert words in str(info.value)


def test_a_child_killed_by_a_signal_is_reported():
    import os
    import signal

    with pytest.raises(AdvbenchError, match="killed by signal"):
        run_with_time_limit(lambda: os.kill(os.getpid(), signal.SIGKILL), timeout_s=60, name="crashy")


def test_time_limit_must_be_positive():
    with pytest.raises(ValueError, match="timeout_s > 0"):
        run_with_time_limit(dict, timeout_s=0, name="x")
