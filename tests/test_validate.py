"""advbench.suite.validate (`advbench validate` and load_suite): every malformed suite is rejected, naming the
file and field, and all problems are reported at once.

The corpus in tests/suites_bad covers one malformed suite per file; the tests after it add what a corpus file
cannot express: YAML tags that would run code, side effects at absolute paths, timing of a YAML alias bomb,
deep nesting, the dataset sizes validation uses without loading any data, paths outside the project's folders,
absurd sizes, huge seeds, mismatched OOD shapes, scientific notation, names too long for a file name and a
plugin's own parameter check that raises.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from advbench.attacks import ATTACKS
from advbench.attacks.fgsm import FGSM
from advbench.config import parse_eps
from advbench.data import DATASETS, RawDataset, register_dataset
from advbench.errors import ConfigError
from advbench.params import ParamSpec
from advbench.suite import load_suite
from advbench.suite.validate import check_params, validate_suite_dict

ROOT = Path(__file__).resolve().parents[1]
CORPUS = sorted((ROOT / "tests" / "suites_bad").glob("*.yaml"))
SHIPPED = sorted((ROOT / "suites").glob("*.yaml"))
ADVBENCH = Path(sys.executable).with_name("advbench")
BASE = yaml.safe_load((ROOT / "suites" / "quick.yaml").read_text())
TINY = ROOT / "tests" / "suites" / "tiny.yaml"


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


# -- hostile and inconsistent suite files: refused before any work, nothing in them executed ----------


def _write(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "tagged",
    [
        'name: !!python/object/apply:os.system ["touch {marker}"]',
        'name: !!python/object/apply:subprocess.check_call [["touch", "{marker}"]]',
        'name: !!python/object/new:subprocess.Popen [["touch", "{marker}"]]',
        "name: !!python/object/apply:builtins.exec [\"open('{marker}', 'w').close()\"]",
        "name: !!python/name:os.system",
        "name: !!python/module:os",
        "name: !!python/object:builtins.object {{}}",
    ],
)
def test_python_tags_are_refused_and_never_run(tmp_path, tagged):
    marker = tmp_path / "pwned"
    text = GOOD.replace("name: good", tagged.format(marker=marker))
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    message = str(info.value)
    assert f"{path}:1: name: given the YAML tag '!!python/" in message
    assert "builds a Python object" in message and "remove the tag" in message
    assert not marker.exists()


def test_tag_deep_inside_is_found_with_its_line(tmp_path):
    marker = tmp_path / "pwned"
    tag = f'!!python/object/apply:os.system ["touch {marker}"]'
    text = GOOD + f"attacks:\n  - name: fgsm\n    eps: [0.1]\n    params: {{x: {tag}}}\n"
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=r"suite\.yaml:12: attacks\[0\]\.params\.x: given the YAML tag"):
        load_suite(path)
    assert not marker.exists()


def test_alias_bomb_is_refused_quickly(tmp_path):
    lines = ["a: &a [" + ", ".join(["lol"] * 10) + "]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")  # 10**9 values once expanded
    path = _write(tmp_path, "\n".join(lines) + "\n" + GOOD)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than 100,000 values through YAML aliases"):
        load_suite(path)
    assert time.perf_counter() - start < 5


def test_small_aliases_still_work(tmp_path):
    text = GOOD.replace(
        "    architecture: cnn-digits\n",
        "    architecture: cnn-digits\n    recipe: &r {epochs: 2, lr: 0.003}\n"
        "  - name: other\n    architecture: cnn-digits\n    recipe: *r\n",
    )
    suite = load_suite(_write(tmp_path, text))
    assert suite.models[0].recipe == suite.models[1].recipe


def test_deep_nesting_is_a_config_error(tmp_path):
    path = _write(tmp_path, GOOD + "description: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError):
        load_suite(path)


def test_fashion_splits_checked_without_loading(tmp_path, monkeypatch):
    import advbench.data.builtin as builtin

    monkeypatch.setattr(builtin, "find_idx_dir", lambda *a, **k: pytest.fail("validate loaded fashion-mnist"))
    text = GOOD.replace("name: digits", "name: fashion-mnist").replace("cnn-digits", "cnn")
    text = text.replace("{train: 500, test: 200}", "{train: 59500, test: 10001}")
    text += "evaluations:\n  dknn: {k: 75, calibration_size: 750}\n"
    with pytest.raises(ConfigError) as info:
        load_suite(_write(tmp_path, text))
    problems = "\n".join(info.value.problems)
    assert "dataset.splits.test: given 10001; expected at most the 10000" in problems
    assert "given train=59500, calibration=750 (evaluations.dknn.calibration_size): 60250 examples" in problems


def test_user_dataset_declares_its_size(tmp_path):
    import numpy as np

    @register_dataset("tiny-user-set", sizes=(50, None))
    def tiny() -> RawDataset:
        x = np.zeros((50, 1, 8, 8), np.uint8)
        return RawDataset("tiny-user-set", x, np.arange(50) % 2, None, None, 2, ("a", "b"))

    try:
        text = GOOD.replace("name: digits", "name: tiny-user-set").replace("{train: 500, test: 200}", "{train: 40}")
        expected = r"given train=40, calibration=1 \(evaluations.dknn.calibration_size\), test=10: 51 examples in all"
        with pytest.raises(ConfigError, match=expected + "; expected at most the 50 examples"):
            load_suite(_write(tmp_path, text + "evaluations:\n  dknn: {k: 5, calibration_size: 1}\n"))
        load_suite(_write(tmp_path, text, "ok.yaml"))  # 40 + 10 fits
    finally:
        DATASETS.unregister("tiny-user-set")


@pytest.mark.parametrize("path", sorted((ROOT / "suites").glob("*.yaml")) + [ROOT / "tests" / "suites" / "tiny.yaml"])
def test_shipped_suites_pass_the_new_checks(path):
    if not path.is_file():
        pytest.skip(f"{path} is not in this checkout")
    load_suite(path)


# -- a suite file is data: paths, sizes, seeds, OOD shapes, numbers --------------------------------------


def _suite_text(**top: str) -> str:
    """quick.yaml with top-level keys replaced by raw YAML snippets."""
    data = dict(BASE)
    out = yaml.safe_dump({k: v for k, v in data.items() if k not in top}, sort_keys=False)
    return out + "".join(f"{k}: {v}\n" for k, v in top.items())


@pytest.fixture
def in_project(monkeypatch):
    monkeypatch.chdir(ROOT)


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_suite(path)
    return exc.value.problems


@pytest.mark.parametrize(
    "output, words",
    [
        ("/tmp/x.md", "absolute"),
        ("../outside.md", "'..'"),
        ("reports/../../x.md", "'..'"),
        ("~/x.md", "'~'"),
        ("suites/quick.yaml", "outside the allowed folders"),  # a suite overwriting a suite
        ("advbench/evil.pth", "outside the allowed folders"),
        ("reports/{0}.md", "{0}"),
        ("reports/{name.__class__}.md", "{name.__class__}"),
        ("reports/{name!r}.md", "{name!r}"),
        ("reports/{}.md", "{}"),
        ("reports/{name.md", "not a valid template"),
    ],
)
def test_report_output_outside_the_reports_folder_is_refused(tmp_path, in_project, output, words):
    problems = _problems(_write(tmp_path, _suite_text(report=f"{{output: {output!r}}}")))
    assert any("report.output" in p and words in p for p in problems), problems


@pytest.mark.parametrize("cache_dir", ["/", "/tmp", "..", ".cache/../..", "~", "runs", "reports"])
def test_cache_dir_outside_dot_cache_is_refused(tmp_path, in_project, cache_dir):
    problems = _problems(_write(tmp_path, _suite_text(cache_dir=repr(cache_dir))))
    assert any(p.split(": ", 2)[1] == "cache_dir" for p in problems), problems


def test_a_symlink_inside_reports_pointing_out_is_refused(tmp_path, in_project):
    link = ROOT / "reports" / "w17-escape-link"
    link.symlink_to(tmp_path, target_is_directory=True)
    try:
        problems = _problems(_write(tmp_path, _suite_text(report="{output: reports/w17-escape-link/x.md}")))
    finally:
        link.unlink()
    assert any("symlink" in p for p in problems), problems


def test_a_suite_name_cannot_smuggle_a_path(tmp_path, in_project):
    # the name is pattern-checked; and {name} is formatted before the path check anyway
    problems = _problems(_write(tmp_path, _suite_text(name="'../../x'")))
    assert any(p.split(": ", 2)[1] == "name" for p in problems), problems


def test_safe_paths_pass(tmp_path, in_project):
    s = load_suite(
        _write(tmp_path, _suite_text(cache_dir="'.cache/cells'", report="{output: 'reports/sub/{name}.md'}"))
    )
    assert s.cache_dir == ".cache/cells"


def test_every_problem_in_one_pass(tmp_path, in_project):
    text = _suite_text(cache_dir="/", report="{output: /etc/passwd}", seeds=f"[0, {2**64}]").replace(
        "shape:\n      - 1\n      - 8\n      - 8", "shape: [1, 9, 9]"
    )
    problems = _problems(_write(tmp_path, text))
    fields = {p.split(": ", 2)[1] for p in problems}
    assert {"cache_dir", "report.output", "seeds[1]", "evaluations.ood.dataset"} <= fields, problems


@pytest.mark.parametrize("seed", [2**63, 2**64, 2**100])
def test_huge_seeds_are_refused(tmp_path, in_project, seed):
    problems = _problems(_write(tmp_path, _suite_text(seeds=f"[0, {seed}]")))
    assert any("seeds[1]" in p and "2**63" in p for p in problems), problems


def test_negative_seeds_are_refused(tmp_path, in_project):
    assert any("seeds" in p for p in _problems(_write(tmp_path, _suite_text(seeds="[-1]"))))


def test_largest_seed_passes(tmp_path, in_project):
    assert load_suite(_write(tmp_path, _suite_text(seeds=f"[0, {2**63 - 1}]"))).seeds == [0, 2**63 - 1]


@pytest.mark.parametrize(
    "dataset",
    [
        "{name: digits, params: {size: 100000}, splits: {train: 1000, test: 400}}",
        "{name: synthetic, params: {n: 100000000, shape: [3, 224, 224], num_classes: 4}}",
    ],
)
def test_absurd_data_sizes_are_refused_with_an_estimate(tmp_path, in_project, dataset):
    text = _suite_text(dataset=dataset).replace("ood: {dataset: synthetic", "ood_unused: {dataset: synthetic")
    problems = _problems(_write(tmp_path, text.replace("ood_unused", "ood")))
    assert any("GiB of memory" in p and "ADVBENCH_MAX_DATA_GB" in p for p in problems), problems


def test_the_memory_limit_can_be_raised(tmp_path, in_project, monkeypatch):
    text = _write(
        tmp_path, _suite_text(dataset="{name: digits, params: {size: 2000}, splits: {train: 1000, test: 400}}")
    )
    assert any("GiB of memory" in p for p in _problems(text))
    monkeypatch.setenv("ADVBENCH_MAX_DATA_GB", "100000")
    assert not any("GiB of memory" in p for p in _problems(text))  # other problems (OOD shape) remain


@pytest.mark.parametrize(
    "ood, shape",
    [
        ("{dataset: synthetic, params: {n: 300, num_classes: 10, shape: [1, 28, 28]}}", "(1, 28, 28)"),
        ("{dataset: synthetic, params: {n: 300, num_classes: 10, shape: [3, 8, 8]}}", "(3, 8, 8)"),
        ("{dataset: digits, params: {size: 28}}", "(1, 28, 28)"),
    ],
)
def test_an_ood_set_of_another_shape_is_refused(tmp_path, in_project, ood, shape):
    evaluations = yaml.safe_dump(BASE["evaluations"], default_flow_style=True).strip()
    evaluations = evaluations.replace(evaluations[evaluations.index("ood:") :], f"ood: {ood}}}")
    problems = _problems(_write(tmp_path, _suite_text(evaluations=evaluations)))
    assert any("evaluations.ood.dataset" in p and shape in p and "(1, 8, 8)" in p for p in problems), problems


def test_scientific_notation_is_a_number_everywhere(tmp_path, in_project):
    text = _suite_text(
        attacks="[{name: fgsm, eps: [1e-3, 2E-1]}, {name: pgd, eps: [1e-1], params: {steps: 2, step_size: 1e-2}}]"
    ).replace("lr: 0.003", "lr: 3e-3")
    s = load_suite(_write(tmp_path, text))
    assert s.attacks[0].eps == [0.001, 0.2]
    assert s.attacks[1].params["step_size"] == 0.01
    assert s.models[0].recipe.lr == 0.003


def test_no_file_is_written_by_validate(tmp_path, in_project):
    before = set(os.listdir(ROOT / "reports"))
    _problems(_write(tmp_path, _suite_text(report="{output: reports/new-{0}.md}")))
    assert set(os.listdir(ROOT / "reports")) == before


# -- inputs that used to end in a traceback (issue 33) -----------------------------------------------


def _doc(**changes: Any) -> dict[str, Any]:
    doc = yaml.safe_load(TINY.read_text())
    doc.update(changes)
    return doc


def test_names_too_long_for_a_file_name_are_refused_before_anything_runs():
    with pytest.raises(ConfigError) as err:
        validate_suite_dict(_doc(name="x" * 300))
    assert "at most 100 characters" in str(err.value)
    doc = _doc()
    doc["models"][0]["name"] = "m" * 65
    with pytest.raises(ConfigError, match="at most 64 characters"):
        validate_suite_dict(doc)


class _Unannotated(FGSM):
    """A plugin whose parameter is not annotated and whose own value check compares it with a number."""

    def __init__(self, *, steps=10, **kw):
        super().__init__(**kw)
        self.steps = steps

    @classmethod
    def _check_values(cls, params):
        return ["steps must be at least 1"] if params["steps"] < 1 else []


def test_a_plugins_own_parameter_check_that_raises_is_a_problem_not_a_traceback():
    ATTACKS.add("test-unannotated", _Unannotated, source="tests")
    try:
        doc = _doc(attacks=[{"name": "test-unannotated", "eps": [0.1], "params": {"steps": "ten"}}])
        with pytest.raises(ConfigError) as err:
            validate_suite_dict(doc)
        text = str(err.value)
        assert "parameter check failed (TypeError" in text and "steps='ten' (str)" in text
        # a well-typed value passes through the same check
        validate_suite_dict(_doc(attacks=[{"name": "test-unannotated", "eps": [0.1], "params": {"steps": 3}}]))
    finally:
        ATTACKS.unregister("test-unannotated")
