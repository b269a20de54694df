"""Attack plugins: the decorator, entry points (broken and clashing), and a real installed package."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from advbench.errors import DuplicateNameError
from advbench.registry import PluginWarning, Registry

PLUGIN = Path(__file__).parent / "plugins" / "advbench-demo-plugin"


class _Dist:
    def __init__(self, name: str) -> None:
        self.name = name


class _EntryPoint:
    """The part of importlib.metadata.EntryPoint the registry uses."""

    def __init__(self, name: str, value: str, dist: str, load) -> None:
        self.name, self.value, self.dist, self._load = name, value, _Dist(dist), load

    def load(self):
        return self._load()


def _registry_with(monkeypatch, *eps: _EntryPoint) -> Registry:
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: list(eps) if group == "test.attacks" else [])
    return Registry("attack", group="test.attacks")


def _fail():
    raise ImportError("No module named 'torch_attack_zoo'")


def test_broken_plugin_is_a_warning_naming_it(monkeypatch):
    reg = _registry_with(
        monkeypatch,
        _EntryPoint("good", "good_pkg:Good", "good-pkg", lambda: "GoodAttack"),
        _EntryPoint("zoo", "zoo_pkg:Zoo", "zoo-pkg", _fail),
    )
    with pytest.warns(
        PluginWarning,
        match=r"plugin 'zoo' = 'zoo_pkg:Zoo' from the package 'zoo-pkg': "
        r"ImportError: No module named 'torch_attack_zoo'",
    ):
        assert reg.list() == ["good"]
    assert reg.get("good") == "GoodAttack"
    assert "zoo (zoo-pkg)" in reg.failed_plugins


def test_two_plugins_claiming_one_name_name_both_distributions(monkeypatch):
    reg = _registry_with(
        monkeypatch,
        _EntryPoint("pgd-fast", "a:PGD", "fast-attacks", lambda: object()),
        _EntryPoint("pgd-fast", "b:PGD", "quick-attacks", lambda: object()),
    )
    with pytest.raises(DuplicateNameError, match=r"'fast-attacks'.*'quick-attacks'"):
        reg.list()


def test_register_attack_decorator_and_duplicates():
    from advbench.attacks import ATTACKS, Attack, register_attack

    @register_attack("test-identity")
    class Identity(Attack):
        def run(self, model, x, y, threat, generator):
            return x

    try:
        assert ATTACKS.entry("test-identity").source == "user"
        with pytest.raises(DuplicateNameError, match="'test-identity' is registered twice"):
            register_attack("test-identity")(type("Other", (Identity,), {}))
        with pytest.raises(DuplicateNameError, match="by 'advbench' and by 'user'"):
            register_attack("pgd")(type("MyPGD", (Identity,), {}))
    finally:
        ATTACKS.unregister("test-identity")


@pytest.fixture(scope="module")
def installed_plugin():
    """pip-install the demo plugin (editable, offline) into this venv for the module; uninstall after."""
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(PLUGIN)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    try:
        yield
    finally:
        subprocess.run(
            [*pip, "uninstall", "-q", "-y", "advbench-demo-plugin"], check=False, capture_output=True, timeout=300
        )


def _advbench(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("advbench")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.integration
@pytest.mark.integration
def test_installed_plugin_is_listed_validated_and_checked(installed_plugin, tmp_path):
    out = _advbench("list", "attacks", "demo-*")
    assert out.returncode == 0, out.stderr
    assert "demo-sign-noise" in out.stdout and "advbench-demo-plugin" in out.stdout and "scale=1.0" in out.stdout

    suite = (Path(__file__).resolve().parents[1] / "suites" / "quick.yaml").read_text(encoding="utf-8")
    good = tmp_path / "good.yaml"
    good.write_text(suite.replace("{name: fgsm,", "{name: demo-sign-noise, params: {scale: 0.5},"), encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text(suite.replace("{name: fgsm,", "{name: demo-sign-noise, params: {scale: 2},"), encoding="utf-8")
    assert _advbench("validate", str(good)).returncode == 0
    res = _advbench("validate", str(bad))
    assert res.returncode != 0 and "scale: expected a number in (0, 1], got 2" in res.stdout + res.stderr

    code = textwrap.dedent("""
        import torch
        from advbench.attacks import ThreatModel, create_attack, generate
        from advbench.errors import ThreatModelError
        from advbench.models import create_model
        model = create_model("cnn-digits", num_classes=10, input_shape=(1, 8, 8))
        x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
        res = generate(model, create_attack("demo-sign-noise"), x, y, ThreatModel(eps=0.1), batch_size=4)
        assert float(res.linf.max()) <= 0.1 + 1e-6
        try:
            generate(model, create_attack("demo-broken"), x, y, ThreatModel(eps=0.1), batch_size=4)
        except ThreatModelError as exc:
            print("REFUSED:", exc)
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "REFUSED: attack BrokenAttack() produced an invalid adversarial batch 0: example" in run.stdout
