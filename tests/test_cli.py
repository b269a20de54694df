"""The command line: help with worked examples, `list` tables, `validate` exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from advbench.cli.main import main

ADVBENCH = Path(sys.executable).with_name("advbench")
VALID = """\
name: ok
dataset: {name: digits, splits: {train: 500, test: 200}}
models:
  - {name: baseline, architecture: cnn-digits}
"""


COMMANDS = [[], ["run"], ["validate"], ["list"], ["report"]]


@pytest.mark.integration
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0] if c else "top")
def test_help_shows_a_worked_example(command):
    proc = subprocess.run([str(ADVBENCH), *command, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "example" in proc.stdout
    shown = "advbench " + (command[0] if command else "")
    example = proc.stdout.split("example", 1)[1]
    assert shown in example, f"no `{shown} ...` line in the example:\n{proc.stdout}"


def test_version_and_no_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and "advbench" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


@pytest.mark.parametrize(
    ("kind", "names"), [("datasets", ["digits", "fashion-mnist", "synthetic"]), ("models", ["cnn"])]
)
def test_list_prints_a_table(kind, names, capsys):
    assert main(["list", kind]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert header.startswith("|") and "name" in header and "parameters" in header and "source" in header
    for name in names:
        assert f"| {name} " in out
    assert out.rstrip().endswith(kind)


def test_list_glob_and_no_match(capsys):
    assert main(["list", "datasets", "*mnist"]) == 0
    out = capsys.readouterr().out
    assert "fashion-mnist" in out and "| digits " not in out
    assert main(["list", "datasets", "zzz*"]) == 1
    assert "no datasets match" in capsys.readouterr().out


def test_validate_exit_codes(tmp_path, capsys):
    good = tmp_path / "ok.yaml"
    good.write_text(VALID)
    assert main(["validate", str(good)]) == 0
    assert "valid suite 'ok'" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(VALID.replace("cnn-digits", "cnn-digitz"))
    assert main(["validate", str(good), str(bad), str(tmp_path / "missing.yaml")]) == 2
    captured = capsys.readouterr()
    assert "valid suite 'ok'" in captured.out
    assert f"{bad}:4: models[0].architecture: given 'cnn-digitz'" in captured.err
    assert "did you mean 'cnn-digits'" in captured.err
    assert "missing.yaml: the file does not exist" in captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "ok.yaml"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--time-limit", "0"], "expected a positive number of seconds"),
        (["--time-limit", "soon"], "expected a number of seconds"),
        (["--threads", "0"], "expected at least 1 thread"),
        (["--executor", "dask"], "invalid choice"),
    ],
)
def test_run_options_are_checked_before_anything_runs(tmp_path, capsys, args, message):
    suite = tmp_path / "ok.yaml"
    suite.write_text(VALID)
    with pytest.raises(SystemExit) as info:
        main(["run", str(suite), "--runs-dir", str(tmp_path / "runs"), *args])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_address_without_the_ray_executor_is_refused(tmp_path, capsys):
    suite = tmp_path / "ok.yaml"
    suite.write_text(VALID)
    code = main(["run", str(suite), "--address", "10.0.0.1:6379", "--runs-dir", str(tmp_path / "runs")])
    assert code == 2 and "add --executor ray" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
