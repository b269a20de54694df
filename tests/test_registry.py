"""The generic registry: decorator, get/create/list, close matches, duplicates, entry-point plugins."""

from __future__ import annotations

import pickle
import textwrap
import uuid
import warnings
from pathlib import Path

import pytest

from advbench.errors import DuplicateNameError, UnknownNameError
from advbench.registry import PluginWarning, Registry


@pytest.fixture
def reg() -> Registry:
    r: Registry = Registry("widget", group=None)

    @r.register("alpha-net", family="a")
    def alpha_net(*, width: int = 2) -> tuple[str, int]:
        return ("alpha", width)

    @r.register()
    def beta(*, scale: float = 1.0) -> float:
        return scale

    r.add("gamma", 3)
    return r


def test_register_get_create_list(reg):
    assert reg.list() == ["alpha-net", "beta", "gamma"]
    assert reg.list("*a-*") == ["alpha-net"]
    assert reg.list("B*") == ["beta"]  # case-insensitive glob
    assert reg.list("zzz*") == []
    assert reg.get("gamma") == 3
    assert reg.create("alpha-net", width=5) == ("alpha", 5)
    assert reg.entry("alpha-net").meta == {"family": "a"}
    assert "beta" in reg and "nope" not in reg and len(reg) == 3 and list(reg) == reg.list()
    with pytest.raises(TypeError, match="not callable"):
        reg.create("gamma")
    reg.unregister("gamma")
    assert "gamma" not in reg


def test_empty_or_bad_names_rejected(reg):
    with pytest.raises(ValueError, match="non-empty string"):
        reg.add("", 1)


def test_duplicate_names_both_sources(reg):
    with pytest.raises(DuplicateNameError) as info:
        reg.add("beta", lambda: None, source="otherpkg")
    msg = str(info.value)
    assert "'beta'" in msg and "'advbench'" not in msg and "'user'" in msg and "'otherpkg'" in msg
    same = reg.get("beta")
    reg.add("beta", same)  # re-registering the very same object is harmless


def test_unknown_name_suggests_close_matches(reg):
    with pytest.raises(UnknownNameError) as info:
        reg.get("alpha_net")
    err = info.value
    assert err.close[0] == "alpha-net"
    assert "Did you mean 'alpha-net'" in str(err) and "advbench list widgets" in str(err)
    assert isinstance(err, KeyError)
    with pytest.raises(UnknownNameError) as info:
        reg.get("BETA")
    assert info.value.close[0] == "beta"  # case-only differences are always suggested
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and back.close == err.close


# -- entry points through real distributions on sys.path --------------------------------------


def make_dist(site: Path, dist: str, entry_points: str, modules: dict[str, str]) -> None:
    """A real, importable distribution: NAME-1.0.dist-info/{METADATA,entry_points.txt} plus modules."""
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for name, code in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(code))


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A fresh site folder on sys.path, a unique group and a hub module holding its registry."""
    uid = uuid.uuid4().hex[:8]
    folder = tmp_path / "site"
    folder.mkdir()
    group = f"advbench_test_{uid}.widgets"
    hub = f"hub_{uid}"
    (folder / f"{hub}.py").write_text(
        f"from advbench.registry import Registry\nREG = Registry('widget', group={group!r})\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    return folder, group, hub, uid


def test_entry_points_object_and_module_plugins(site):
    folder, group, hub, uid = site
    make_dist(
        folder,
        "good-plugin",
        f"""
        [{group}]
        obj-widget = gp_{uid}:make_widget
        modwidgets = gpmod_{uid}
        """,
        {
            f"gp_{uid}": "def make_widget(*, size: int = 1):\n    return ('w', size)\n",
            f"gpmod_{uid}": f"from {hub} import REG\n\n@REG.register('decorated')\ndef decorated():\n    return 42\n",
        },
    )
    reg = __import__(hub).REG
    assert reg.list() == ["decorated", "obj-widget"]  # loaded lazily on the first lookup
    assert reg.create("obj-widget", size=3) == ("w", 3)
    assert reg.entry("obj-widget").source == "good-plugin"
    assert reg.entry("decorated").source == "good-plugin"  # decorator use during plugin import is credited


def test_broken_plugin_warns_and_the_rest_loads(site):
    folder, group, hub, uid = site
    make_dist(
        folder,
        "mixed-plugin",
        f"""
        [{group}]
        broken = bad_{uid}
        missing = nosuchmodule_{uid}:thing
        fine = ok_{uid}:fine
        """,
        {f"bad_{uid}": "raise RuntimeError('boom at import')\n", f"ok_{uid}": "def fine():\n    return 1\n"},
    )
    reg = __import__(hub).REG
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert reg.list() == ["fine"]
    messages = [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]
    assert len(messages) == 2
    broken = next(m for m in messages if "'broken'" in m)
    assert "RuntimeError: boom at import" in broken and "'mixed-plugin'" in broken and f"bad_{uid}" in broken
    assert any("'missing'" in m and "ModuleNotFoundError" in m for m in messages)
    assert set(reg.failed_plugins) == {"broken (mixed-plugin)", "missing (mixed-plugin)"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert reg.get("fine")() == 1  # loaded once: no second warning


def test_two_distributions_claiming_one_name(site):
    folder, group, hub, uid = site
    a_code = {f"pa_{uid}": "def thing():\n    return 'a'\n"}
    make_dist(folder, "plug-a", f"[{group}]\nshared = pa_{uid}:thing\n", a_code)
    make_dist(
        folder,
        "plug-b",
        f"[{group}]\nshared = pb_{uid}:thing\nonly-b = pb_{uid}:other\n",
        {f"pb_{uid}": "def thing():\n    return 'b'\n\ndef other():\n    return 'b2'\n"},
    )
    reg = __import__(hub).REG
    with pytest.raises(DuplicateNameError) as info:
        reg.list()
    msg = str(info.value)
    assert "'shared'" in msg and "'plug-a'" in msg and "'plug-b'" in msg
    with pytest.raises(DuplicateNameError):  # stays an error until one package goes
        reg.get("only-b")


def test_module_plugins_clashing_by_decorator(site):
    folder, group, hub, uid = site
    code = f"from {hub} import REG\n\n@REG.register('same')\ndef same():\n    return 0\n"
    make_dist(folder, "deco-a", f"[{group}]\nmods = da_{uid}\n", {f"da_{uid}": code})
    make_dist(folder, "deco-b", f"[{group}]\nmods = db_{uid}\n", {f"db_{uid}": code})
    reg = __import__(hub).REG
    with pytest.raises(DuplicateNameError, match=r"'deco-a'.*'deco-b'"):
        reg.list()


def test_builtins_come_through_the_entry_points():
    from advbench.data import DATASETS
    from advbench.models import MODELS

    assert {"digits", "fashion-mnist", "mnist", "synthetic"} <= set(DATASETS.list())
    assert DATASETS.entry("digits").source == "advbench"
    assert "cnn" in MODELS.list("cnn*") and MODELS.entry("cnn").source == "advbench"


def test_metadata_is_read_only_and_needs_no_call(reg):
    calls = []

    @reg.register("meta", layers=("a", "b"))
    def factory() -> None:
        calls.append(1)

    assert reg.metadata("meta")["layers"] == ("a", "b")
    assert calls == []
    with pytest.raises(TypeError):
        reg.metadata("meta")["layers"] = ()  # type: ignore[index]
    with pytest.raises(UnknownNameError):
        reg.metadata("nope")


def test_builtin_architectures_declare_the_layers_they_build():
    from advbench.models import MODELS, create_model, declared_hidden_layers

    shapes = {"resnet-small": (3, 32, 32), "cnn-digits": (1, 8, 8)}
    for name in ("mlp", "cnn", "cnn-digits", "resnet-small"):
        model = create_model(name, num_classes=10, input_shape=shapes.get(name, (1, 28, 28)))
        assert declared_hidden_layers(name) == model.hidden_layers, name
    wide = create_model("mlp", num_classes=10, input_shape=(1, 8, 8), hidden=(8, 8, 8))
    assert declared_hidden_layers("mlp", {"hidden": [8, 8, 8]}) == wide.hidden_layers == ("fc1", "fc2", "fc3")
    assert MODELS.metadata("cnn")["layers"] == ("conv1", "conv2", "fc1")


@pytest.mark.parametrize(
    "code", ["import sys\nsys.exit(0)\n", "raise SystemExit(3)\n", "import sys\nsys.exit('bye')\n"]
)
def test_a_plugin_that_exits_at_import_is_a_broken_plugin(site, code):
    folder, group, hub, uid = site
    make_dist(
        folder,
        "exiting-plugin",
        f"""
        [{group}]
        quitter = quit_{uid}
        fine = ok2_{uid}:fine
        """,
        {f"quit_{uid}": code, f"ok2_{uid}": "def fine():\n    return 1\n"},
    )
    reg = __import__(hub).REG
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert reg.list() == ["fine"]  # no SystemExit escapes: `advbench list` and `validate` live on
    messages = [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]
    assert len(messages) == 1 and "'quitter'" in messages[0] and "sys.exit" in messages[0]
    assert "'exiting-plugin'" in messages[0]
