"""advbench.suite.paths: report and cache paths. A path given on the command line (or in $ADVBENCH_CACHE) is the
user's choice, one from a suite file must stay inside the project's folders; report templates take only {name}."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from advbench.config import Suite
from advbench.errors import ConfigError
from advbench.suite.paths import report_template_problems, resolve_cache_dir, resolve_report_path

ROOT = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((ROOT / "suites" / "quick.yaml").read_text())


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
