"""`advbench validate` and load_suite: every malformed suite is rejected, naming the file and field."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from advbench.attacks import ATTACKS
from advbench.config import parse_eps
from advbench.errors import ConfigError
from advbench.params import ParamSpec
from advbench.suite import load_suite
from advbench.suite.validate import check_params

ROOT = Path(__file__).resolve().parents[1]
CORPUS = sorted((ROOT / "tests" / "suites_bad").glob("*.yaml"))
SHIPPED = sorted((ROOT / "suites").glob("*.yaml"))
ADVBENCH = Path(sys.executable).with_name("advbench")


def expectations(path: Path) -> list[str]:
    """The `# expect: ...` lines at the top of a corpus file (the first line always is one)."""
    out = []
    for line in path.read_text().splitlines():
        if not line.startswith("# expect:"):
            break
        out.append(line.removeprefix("# expect:").strip())
    return out


@pytest.fixture
def needed_attacks():
    """fgsm / bim / pgd as stand-ins while (or where) the real ones are not registered."""
    added = []
    for name in ("fgsm", "bim", "pgd"):
        if name not in ATTACKS:

            def stand_in(*, steps: int = 10, step_size: float | None = None, random_start: bool = True) -> None: ...

            ATTACKS.add(name, stand_in, source="tests")
            added.append(name)
    yield
    for name in added:
        ATTACKS.unregister(name)


def test_corpus_is_big_and_annotated():
    assert len(CORPUS) >= 30
    for path in CORPUS:
        assert expectations(path), f"{path.name}: the first line must be '# expect: <substring>'"


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_bad_suite_is_rejected_naming_field_and_file(path, needed_attacks, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written: the cwd stays empty
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    message = str(info.value)
    for expected in expectations(path):
        assert expected in message, f"{path.name}: expected {expected!r} in:\n{message}"
    assert info.value.problems
    for problem in info.value.problems:
        assert problem.startswith(str(path)), problem  # every problem names the file
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration
def test_cli_rejects_every_corpus_file_at_once(tmp_path):
    """One subprocess for the whole corpus: exit 2, each file named, nothing written."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "ADVBENCH_CACHE": str(tmp_path / "cache")}
    work = tmp_path / "cwd"
    work.mkdir()
    proc = subprocess.run(
        [str(ADVBENCH), "validate", *map(str, CORPUS)], cwd=work, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    for path in CORPUS:
        assert f"{path}: " in proc.stderr, f"{path.name} not reported"
        # without the stand-in attacks, attack-dependent expectations may read "unknown attack" instead
        if "attacks" not in path.read_text().split("\n", 1)[1] or {"fgsm", "bim", "pgd"} <= set(ATTACKS.list()):
            block = proc.stderr.split(f"{path}: ", 1)[1]
            for expected in expectations(path):
                assert expected in block, f"{path.name}: {expected!r} not in CLI output"
    assert list(work.iterdir()) == []
    assert not (tmp_path / "cache").exists()


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_suite(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="given a folder"):
        load_suite(tmp_path)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_suites_are_valid(path):
    missing = [n for n in ("fgsm", "bim", "pgd") if n not in ATTACKS]
    if missing:
        pytest.skip(f"attacks {missing} are not registered yet (advbench/attacks/builtin.py)")
    suite = load_suite(path)
    # a sweep trains and reads validation data only; every other shipped suite attacks its models
    assert suite.models and (suite.attacks or suite.dataset.splits.validation)
    # each suite says how to run it, under the line that points editors at the schema (tests/test_schema.py)
    assert path.read_text().splitlines()[1].startswith(f"# advbench run suites/{path.name}")


GOOD = """\
name: good
dataset:
  name: digits
  splits: {train: 500, test: 200}
models:
  - name: baseline
    architecture: cnn-digits
seeds: [0]
"""


def test_all_problems_reported_at_once_with_right_lines(tmp_path):
    text = """\
name: three
dataset:
  name: digitz
  splits: {train: 500, test: 200}
models:
  - name: baseline
    architecture: cnn-digits
    recipe:
      lr: -1
seeds: [0, 0]
"""
    path = tmp_path / "three.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    problems = info.value.problems
    assert len(problems) == 3, problems
    by_field = {p.split(": ")[1]: p for p in problems}
    assert by_field["dataset.name"].startswith(f"{path}:3: ")
    assert "did you mean 'digits'" in by_field["dataset.name"]
    assert by_field["models[0].recipe.lr"].startswith(f"{path}:9: ")
    assert "given -1" in by_field["models[0].recipe.lr"] and "> 0" in by_field["models[0].recipe.lr"]
    assert by_field["seeds"].startswith(f"{path}:10: ")
    assert "3 problems" in str(info.value)


def test_yaml_syntax_error_has_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ndataset: {name: digits\nmodels: []\n")
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    assert f"{path}:3:" in str(info.value) and "invalid YAML" in str(info.value)


def test_eps_fraction_is_exact(tmp_path, needed_attacks):
    assert parse_eps("8/255") == 8 / 255
    assert parse_eps(" 8 / 255 ") == 8 / 255
    assert parse_eps("0.1") == 0.1 and parse_eps(0) == 0.0 and parse_eps(1) == 1.0
    path = tmp_path / "eps.yaml"
    path.write_text(GOOD + "attacks:\n  - {name: pgd, eps: ['8/255', 0.1, 2/255]}\n")
    suite = load_suite(path)
    assert suite.attacks[0].eps == [8 / 255, 0.1, 2 / 255]


@pytest.mark.parametrize("value", ["8/0", "abc", -0.1, 1.5, 8, True, float("nan"), "1/-2", None])
def test_parse_eps_rejects(value):
    with pytest.raises(ValueError, match="eps"):
        parse_eps(value)


def test_config_error_pickles_for_workers():
    err = ConfigError("x.yaml", ["x.yaml:3: name: given 1; expected a string"])
    back = pickle.loads(pickle.dumps(err))
    assert back.problems == err.problems and str(back) == str(err)


def test_check_params():
    def factory(*, num_classes: int, width: int = 3, shape: tuple[int, int] = (1, 2), needed: str) -> None: ...

    spec = ParamSpec.of(factory)
    problems = check_params(
        spec, {"widht": 4, "shape": "x", "num_classes": 3}, reserved={"num_classes": "from the dataset"}
    )
    text = "\n".join(str(p) for p in problems)
    assert "widht: unknown parameter" in text and "did you mean 'width'" in text
    assert "shape: given 'x'" in text
    assert "num_classes: given 3; expected no 'num_classes' here: advbench sets it from the dataset" in text
    assert "needed: required but missing" in text
    ok = {"num_classes": 10, "needed": "a"}
    assert check_params(spec, {**ok, "width": 5, "shape": [3, 4]}) == []  # a YAML list fits a tuple
    # the same strict rules as the attacks: the factory would receive exactly these values
    assert [p.key for p in check_params(spec, {**ok, "width": "5"})] == ["width"]
    assert [p.key for p in check_params(spec, {**ok, "width": True})] == ["width"]
    assert check_params(spec, {}, check_missing=False) == []


def test_missing_backend_is_named_with_its_install_command(tmp_path, monkeypatch):
    """A suite whose attacks need torchattacks fails validation (and so `advbench run`) when it is absent."""
    import importlib.util

    from advbench.attacks import backends

    real = importlib.util.find_spec
    monkeypatch.setattr(
        backends.importlib.util, "find_spec", lambda name, *a: None if name == "torchattacks" else real(name, *a)
    )
    suite = tmp_path / "s.yaml"
    suite.write_text(
        "name: s\ndataset: {name: digits, splits: {train: 500, test: 200}}\n"
        "models: [{name: m, architecture: cnn-digits}]\n"
        "attacks:\n"
        "  - {name: fgsm, eps: [0.1]}\n"
        "  - {name: pgd, backend: foolbox, eps: [0.1]}\n"
        "  - {name: dknn-adaptive, eps: [0.1]}\n"
        "  - {name: torchattacks.MIFGSM, eps: [0.1]}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_suite(suite)
    problems = info.value.problems
    install = 'pip install --no-deps "torchattacks==3.5.1"'
    assert (
        f"{suite}:5: attacks[0].name: fgsm needs torchattacks, which is not installed; install it with: {install}"
        in problems
    )
    assert not any("attacks[1]" in p or "attacks[2]" in p for p in problems)  # foolbox and advbench's own
    # registered or not (discovery finds nothing without the library), the wrapped attack names the install
    assert any(p.startswith(f"{suite}:8: attacks[3].name: ") and install in p for p in problems)
