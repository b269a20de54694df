"""`advbench schema`: the suite format as JSON Schema, the shipped schema file, and the generated reference."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from advbench.api import check_against_schema
from advbench.cli.main import main
from advbench.config import Suite
from advbench.config.schema import SCHEMA_FILE, suite_reference, suite_schema, suite_schema_text
from advbench.errors import ConfigError
from advbench.suite.validate import validate_suite_dict

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "suites").glob("*.yaml"))
TEST_SUITES = sorted((ROOT / "tests" / "suites").glob("*.yaml"))
HINT = "# yaml-language-server: $schema=suite.schema.json"

VALID = """\
name: ok
dataset: {name: digits, splits: {train: 500, test: 200}}
models:
  - {name: baseline, architecture: cnn-digits, recipe: {epochs: 2}}
attacks:
  - {name: pgd, eps: [0.1, "8/255"]}
evaluations:
  dknn: {k: 10, n_examples: 100}
"""


def test_the_shipped_schema_file_is_what_advbench_schema_prints():
    assert (ROOT / SCHEMA_FILE).read_text() == suite_schema_text(), (
        f"{SCHEMA_FILE} is stale: run `advbench schema --output {SCHEMA_FILE}` and commit it"
    )


def test_the_schema_is_a_valid_draft_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(suite_schema())


@pytest.mark.parametrize("path", SHIPPED + TEST_SUITES, ids=lambda p: p.name)
def test_every_shipped_suite_matches_the_schema(path):
    assert check_against_schema(path) == []


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_suite_points_editors_at_the_schema(path):
    assert path.read_text().splitlines()[0] == HINT
    assert (path.parent / "suite.schema.json").is_file()


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        ("modles:\n  - {name: x, architecture: cnn-digits}\n", "(top level)"),
        ("", "models[0].recipe"),
    ],
)
def test_a_misspelt_field_is_rejected_with_its_path_and_line(tmp_path, edit, where):
    text = VALID + edit if edit else VALID.replace("recipe: {epochs: 2}", "recipe: {epoch: 2}")
    path = tmp_path / "typo.yaml"
    path.write_text(text)
    problems = check_against_schema(path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(where)
    assert "modles" in problems[0] or "epoch" in problems[0]
    assert "line" in problems[0]
    with pytest.raises(ConfigError):  # and advbench validate agrees
        validate_suite_dict(yaml.safe_load(text))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("n_examples: 100", "n_examples: 0"),  # an optional number's bound (pydantic writes it as "ge")
        ("k: 10", "k: true"),  # a boolean is not a number
        ('"8/255"', '"eight"'),
        ("epochs: 2", "epochs: 2.5"),
        ("name: ok", "name: ../ok"),
    ],
)
def test_the_schema_refuses_what_validation_refuses(tmp_path, old, new):
    text = VALID.replace(old, new)
    assert text != VALID
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert check_against_schema(path), f"the schema accepted {new!r}"
    with pytest.raises(ConfigError):
        validate_suite_dict(yaml.safe_load(text))


def test_the_schema_accepts_what_validation_accepts(tmp_path):
    """Fraction eps strings and `recipe: none` are part of the format, not only of the validators."""
    data = yaml.safe_load(VALID)
    assert Suite.model_validate(data)
    jsonschema.validate(data, suite_schema())
    byo = {"name": "mine", "architecture": "cnn-digits", "recipe": "none"}
    byo["weights"] = {"path": "models/mine.safetensors", "sha256": "sha256:" + "0" * 64}
    jsonschema.validate(data | {"models": [byo]}, suite_schema())


def test_the_schema_command(tmp_path, capsys):
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "Suite"
    out = tmp_path / "s.json"
    assert main(["schema", "--output", str(out)]) == 0
    assert out.read_text() == suite_schema_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(VALID.replace("seeds", "seedz") + "seedz: [0]\n")
    good = tmp_path / "good.yaml"
    good.write_text(VALID)
    assert main(["schema", str(good), str(bad)]) == 2
    captured = capsys.readouterr()
    assert f"{good}: matches the suite schema" in captured.out
    assert "seedz" in captured.err and str(bad) in captured.err


def test_the_reference_lists_every_field_with_its_description():
    text = suite_reference()
    for name, field in Suite.model_fields.items():
        assert f"| `{name}` |" in text
        assert field.description and " ".join(field.description.split())[:30] in text
    assert "## DknnConfig" in text and "[DknnConfig](#dknnconfig)" in text
    assert "| `k` | integer (≥ 1) | `75` |" in text
    assert "| `n_examples` | integer (≥ 1) or null | `1000` |" in text  # the optional number keeps its bound
