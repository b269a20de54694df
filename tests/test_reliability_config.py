"""Hostile and inconsistent suite files are refused before any work, and nothing in them is executed.

The corpus in tests/suites_bad covers one malformed suite per file (test_validate.py runs it); these
tests add what a corpus file cannot express: side effects at absolute paths, timing of a YAML alias
bomb, deep nesting, and the dataset sizes validation uses without loading any data.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from advbench.data import DATASETS, RawDataset, dataset_sizes, register_dataset
from advbench.errors import ConfigError
from advbench.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]

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


def test_dataset_sizes_are_known_without_loading(monkeypatch):
    import advbench.data.builtin as builtin

    def boom(*args, **kwargs):
        raise AssertionError("validation must not read or download dataset files")

    monkeypatch.setattr(builtin, "find_idx_dir", boom)
    assert dataset_sizes("fashion-mnist") == (60000, 10000)
    assert dataset_sizes("mnist") == (60000, 10000)
    assert dataset_sizes("digits", {"size": 28}) == (1797, None)
    assert dataset_sizes("synthetic", {"n": 123}) == (123, None)
    assert dataset_sizes("synthetic", {"n": "many"}) is None  # bad params are reported elsewhere
    assert dataset_sizes("no-such-dataset") is None


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
