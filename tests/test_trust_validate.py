"""A suite file is data: validate refuses paths outside the project's folders, absurd sizes, huge
seeds and mismatched OOD shapes, reads scientific notation everywhere, and reports all at once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from advbench.config import Suite
from advbench.errors import ConfigError
from advbench.suite.paths import report_template_problems, resolve_cache_dir, resolve_report_path
from advbench.suite.validate import load_suite

ROOT = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((ROOT / "suites" / "quick.yaml").read_text())


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


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
    assert load_suite(_write(tmp_path, _suite_text(seeds=f"[{2**63 - 1}]"))).seeds == [2**63 - 1]


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


def test_a_quoted_number_string_still_works_for_eps():
    data = dict(BASE) | {"attacks": [{"name": "fgsm", "eps": ["1e-3", "8/255"]}]}
    assert Suite.model_validate(data).attacks[0].eps == [0.001, 8 / 255]


def test_command_line_paths_are_the_users_choice(tmp_path, monkeypatch):
    s = Suite.model_validate(dict(BASE) | {"cache_dir": "/", "report": {"output": "/etc/x.md"}})
    assert resolve_report_path(s, str(tmp_path / "r.md")) == tmp_path / "r.md"
    assert resolve_cache_dir(s, str(tmp_path / "c")) == tmp_path / "c"
    monkeypatch.setenv("ADVBENCH_CACHE", str(tmp_path / "env"))
    assert resolve_cache_dir(s) == tmp_path / "env"  # the environment beats the suite
    monkeypatch.delenv("ADVBENCH_CACHE")
    with pytest.raises(ConfigError, match="cache_dir"):
        resolve_cache_dir(s)
    with pytest.raises(ConfigError, match=r"report\.output"):
        resolve_report_path(s)


def test_template_checker():
    assert report_template_problems("reports/{name}.md") == []
    assert report_template_problems("reports/{{literal}}-{name}.md") == []
    assert report_template_problems("reports/{0}.md")
    assert report_template_problems("reports/{name:>99999999}.md")


def test_no_file_is_written_by_validate(tmp_path, in_project):
    before = set(os.listdir(ROOT / "reports"))
    _problems(_write(tmp_path, _suite_text(report="{output: reports/new-{0}.md}")))
    assert set(os.listdir(ROOT / "reports")) == before
