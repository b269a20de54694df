"""Fuzz `advbench validate`: any YAML document gives a clean ConfigError or a valid suite, never a crash."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advbench.config import Suite
from advbench.errors import ConfigError
from advbench.suite.validate import load_suite

KEYS = [
    "name",
    "dataset",
    "models",
    "seeds",
    "attacks",
    "evaluations",
    "report",
    "device",
    "eps",
    "params",
    "architecture",
    "recipe",
    "snnl",
    "alpha",
    "splits",
    "train",
    "test",
    "k",
    "dknn",
    "transfer",
    "label",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["8/255", "digits", "cnn", "pgd", "1/0", "-0.1"]),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=6)),
    max_leaves=25,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=documents)
def test_random_documents_give_a_clean_error_or_a_suite(tmp_path, doc):
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        suite = load_suite(path)
    except ConfigError as exc:
        assert str(path) in str(exc) and exc.problems
    else:
        assert isinstance(suite, Suite)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_random_text_gives_a_clean_error_or_a_suite(tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_suite(path)
    except ConfigError as exc:
        assert exc.problems


def _leaves(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, (*path, i))
    yield path


QUICK = yaml.safe_load(Path(__file__).resolve().parents[1].joinpath("suites", "quick.yaml").read_text())
PATHS = sorted(set(_leaves(QUICK)), key=str)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(PATHS), value=documents)
def test_mutated_shipped_suite_gives_a_clean_error_or_a_suite(tmp_path, where, value):
    import copy

    doc = copy.deepcopy(QUICK)
    if where:
        parent = doc
        for part in where[:-1]:
            parent = parent[part]
        parent[where[-1]] = value
    else:
        doc = value
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        load_suite(path)
    except ConfigError as exc:
        assert str(path) in str(exc) and exc.problems
