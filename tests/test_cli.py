"""advbench.cli: help with worked examples, `list` tables, `validate` exit codes, `run` options and paths
checked before anything runs, and the read commands on damaged or incomplete run folders.

The read commands (``show``, ``report``, ``compare --exact``, ``power``) also run on a generated set of damaged
run folders: every file of a committed run folder is damaged six ways (missing, emptied, truncated, random bytes,
a symbolic link to a system file, a folder in its place), one copy each. A damaged results file must end in a
clear error (exit 2): the folder's ``SHA256SUMS`` names it. Only damage that leaves every result intact may exit
0: to files the commands do not read (``config.yaml``, Ray's attempt log), to the checksum list itself when it
is gone (the folder is then read as one saved before checksums), or the per-example table missing (committed
folders drop it).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from advbench.cli.main import main
from advbench.suite.threads import MAX_THREADS

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "suites" / "tiny.yaml"
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


# -- `run`: options and paths checked before anything runs ------------------------------------------


@pytest.mark.parametrize("flag", ["--threads", "--workers"])
def test_absurd_thread_and_worker_counts_are_refused_by_the_parser(flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(TINY), "--plan", flag, "100000"])
    assert exit_.value.code == 2
    assert f"expected at most {MAX_THREADS}" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--runs-dir", "--cache-dir"])
def test_a_runs_or_cache_folder_that_is_a_file_is_refused(tmp_path, capsys, flag):
    a_file = tmp_path / "afile"
    a_file.write_text("mine")
    assert main(["run", str(TINY), "--plan", flag, str(a_file)]) == 2
    assert f"({flag} {a_file}): is a file; expected a folder" in capsys.readouterr().err
    assert a_file.read_text() == "mine"


def test_the_cache_refuses_a_file_named_by_the_environment(tmp_path, monkeypatch, capsys):
    a_file = tmp_path / "afile"
    a_file.write_text("mine")
    monkeypatch.setenv("ADVBENCH_CACHE", str(a_file))
    assert main(["run", str(TINY), "--plan"]) == 2
    assert "is a file; expected a folder" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["inf", "nan", "1e12"])
def test_an_endless_time_limit_is_refused_by_the_parser(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(TINY), "--plan", "--time-limit", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "leave --time-limit out for none" in err or "positive number" in err


@pytest.mark.parametrize("content", ["# my notes\n", "", "<!-- generated by someone else -->\n"])
def test_a_report_path_holding_a_foreign_file_is_refused_before_anything_runs(tmp_path, content, capsys):
    target = tmp_path / "notes.md"
    target.write_text(content)
    runs = tmp_path / "runs"
    suite = str(ROOT / "tests" / "suites" / "tiny.yaml")
    code = main(
        ["run", suite, "--report", str(target), "--runs-dir", str(runs), "--cache-dir", str(tmp_path / "cache")]
    )
    assert code == 2 and "refusing to write the report" in capsys.readouterr().err
    assert target.read_text() == content
    assert not runs.exists() and not (tmp_path / "cache").exists()  # nothing ran, nothing was written


# -- `report` on a damaged or incomplete run ---------------------------------------------------------


def _report_cli(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`advbench report RUN --output ...` in this process: its exit status and stderr (an uncaught exception
    propagates, so a pass means the command answered with an error of its own)."""
    code = main(["report", str(run_dir), "--output", str(tmp_path / "out.md")])
    return code, capsys.readouterr().err


def _fake_run(tmp_path: Path, empty_results: Callable[..., Any], status: str = "complete") -> Path:
    run = tmp_path / "run"
    res = empty_results()
    res.save(run / "results")
    (run / "manifest.json").write_text(json.dumps({"status": status, "failed_cells": 0}))
    return run


@pytest.mark.parametrize(
    "damage",
    [
        lambda run: (run / "manifest.json").write_text("{not json"),
        lambda run: (run / "manifest.json").write_text("[1, 2]"),
        lambda run: (run / "results" / "suite.json").write_text("\x00\x01"),
        lambda run: (run / "results" / "suite.json").unlink(),
        lambda run: (run / "results" / "outcomes.csv.gz").write_bytes(b"\x1f\x8b\x08\x00garbage" * 10),
        lambda run: (run / "results").rename(run / "moved"),
    ],
)
def test_report_on_a_damaged_run_is_a_clear_error(tmp_path, damage, capsys, empty_results):
    run = _fake_run(tmp_path, empty_results)
    damage(run)
    code, err = _report_cli(run, tmp_path, capsys)
    assert code != 0 and "error" in err.lower(), err


@pytest.mark.parametrize("status", ["running", "failed", "rendering", "interrupted"])
def test_report_on_an_incomplete_run_says_so_and_exits_non_zero(tmp_path, status, capsys, empty_results):
    code, err = _report_cli(_fake_run(tmp_path, empty_results, status), tmp_path, capsys)
    assert code != 0
    assert status in err and "advbench run" in err


# -- the read commands on a generated set of damaged run folders -------------------------------------

RUN = ROOT / "reports" / "cdd-sweep" / "run"
DAMAGE = ("missing", "empty", "half", "garbage", "symlink", "dir")
#: Damage after which every result is still intact, so a command may succeed.
HARMLESS = (
    {("config.yaml", kind) for kind in DAMAGE}
    | {("ray-attempts.jsonl", kind) for kind in DAMAGE}
    | {
        ("results/SHA256SUMS", "missing"),
        ("results/dknn_examples.csv.gz", "missing"),
    }
)


def _damage(path: Path, kind: str) -> None:
    if kind == "missing":
        path.unlink()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "half":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        path.write_bytes(os.urandom(300))
    elif kind == "symlink":
        path.unlink()
        path.symlink_to("/etc/hostname")
    else:
        path.unlink()
        path.mkdir()


def _run(args: list[str]) -> tuple[int | str, str, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc: int | str = main(["-q", *args])
    except SystemExit as exc:
        rc = f"exit {exc.code}"
    return rc, out.getvalue(), err.getvalue()


FILES = sorted(str(p.relative_to(RUN)) for p in RUN.rglob("*") if p.is_file())


@pytest.mark.skipif(not (RUN / "results" / "SHA256SUMS").is_file(), reason="the committed run has no checksums")
@pytest.mark.parametrize("rel", FILES)
def test_every_damaged_copy_gets_a_clear_error_or_intact_results(tmp_path, rel):
    problems = []
    intact = tmp_path / "intact"
    shutil.copytree(RUN, intact)
    commands = {
        "show": lambda d: ["show", str(d)],
        "report": lambda d: ["report", str(d), "--output", str(tmp_path / f"{d.name}.md")],
        "compare": lambda d: ["compare", str(RUN), str(d), "--exact"],
        "power": lambda d: ["power", str(d)],
    }
    # what each command says of the intact folder (power: this run has no transfer metrics, an error of its own)
    expected = {name: _run(cmd(intact))[::2] for name, cmd in commands.items()}
    for kind in DAMAGE:
        copy = tmp_path / kind
        shutil.copytree(RUN, copy)
        if kind == "empty" and rel == "results/SHA256SUMS":
            continue  # an empty list checks nothing; the folder is then read as it is (and is intact)
        _damage(copy / rel, kind)
        for name, cmd in commands.items():
            rc, _out, err = _run(cmd(copy))  # an exception other than SystemExit fails the test with its traceback
            if (rel, kind) in HARMLESS:
                continue
            if (rc, err.replace(str(copy), str(intact))) == expected[name] and rc != 0:
                continue  # the command does not read that file and says what it says of the intact folder
            if rc == 0:
                problems.append(f"{name} exit 0 on {rel} {kind}")
            elif rc == 2 and "Traceback" not in err and Path(rel).name in err:
                continue  # a clear error naming the damaged file
            elif not (name == "compare" and rc == 1):  # compare --exact: "does not reproduce" is an answer
                problems.append(f"{name} {rc} on {rel} {kind}: {err[-300:]}")
    assert not problems, "\n".join(problems)
