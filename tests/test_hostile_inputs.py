"""Inputs that used to end in a traceback get a clear error instead (issue 33's "old tracebacks")."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from advbench.attacks import ATTACKS
from advbench.attacks.fgsm import FGSM
from advbench.cli.main import main
from advbench.errors import ConfigError
from advbench.suite.threads import MAX_THREADS, check_local_threads
from advbench.suite.validate import validate_suite_dict

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "suites" / "tiny.yaml"


def _doc(**changes: Any) -> dict[str, Any]:
    doc = yaml.safe_load(TINY.read_text())
    doc.update(changes)
    return doc


@pytest.mark.parametrize("flag", ["--threads", "--workers"])
def test_absurd_thread_and_worker_counts_are_refused_by_the_parser(flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(TINY), "--plan", flag, "100000"])
    assert exit_.value.code == 2
    assert f"expected at most {MAX_THREADS}" in capsys.readouterr().err


def test_more_threads_than_this_machine_can_run_is_refused():
    check_local_threads(8, cpus=2)  # up to 4 per CPU is allowed
    with pytest.raises(ValueError, match="may use 2 CPU") as err:
        check_local_threads(9, cpus=2)
    assert "pass at most 2" in str(err.value)


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


# -- run folders are read as untrusted input -------------------------------------------------------


def test_a_symlinked_table_is_refused_not_followed(tmp_path):
    import pandas as pd

    from advbench.errors import AdvbenchError
    from advbench.io import read_run_table

    secret = tmp_path / "secret.txt"
    secret.write_text("name\nroot:x:0:0\n")
    link = tmp_path / "claims.csv"
    link.symlink_to(secret)
    with pytest.raises(AdvbenchError, match="symbolic link") as err:
        read_run_table(link)
    assert "root:x" not in str(err.value)
    plain = tmp_path / "plain.csv"
    pd.DataFrame({"a": [1, 2]}).to_csv(plain, index=False)
    assert read_run_table(plain)["a"].tolist() == [1, 2]


def test_a_gzip_bomb_is_refused_before_it_fills_the_memory(tmp_path):
    import gzip

    import pandas as pd

    from advbench.errors import AdvbenchError
    from advbench.io import read_run_table

    bomb = tmp_path / "outcomes.csv.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as fh:
        fh.write(b"a\n")
        chunk = b"0\n" * (1 << 20)
        for _ in range(80):  # 160 MiB of zeros, a few hundred KiB compressed
            fh.write(chunk)
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(AdvbenchError, match="expands to more than 64 MiB"):
        read_run_table(bomb)
    fine = tmp_path / "fine.csv.gz"
    pd.DataFrame({"a": range(1000)}).to_csv(fine, index=False)
    assert len(read_run_table(fine)) == 1000


def test_compare_exact_refuses_a_table_linked_out_of_the_run_folder(tmp_path, capsys):
    import shutil

    run = ROOT / "reports" / "cdd-sweep" / "run"
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(run, a)
    shutil.copytree(run, b)
    (b / "results" / "clean.csv").unlink()
    (b / "results" / "clean.csv").symlink_to("/etc/hostname")
    assert main(["compare", str(a), str(b), "--exact"]) == 2
    err = capsys.readouterr().err
    assert "symbolic link" in err and "clean.csv" in err


def test_a_suite_description_is_shown_as_text_not_markup():
    from advbench.reports.markdown import escape_markdown

    hostile = "Paired <img src=x onerror=alert(1)> ![t](http://tracker/p.png) [c](javascript:x) | *b*\n# H"
    text = escape_markdown(hostile)
    # every character that could open a tag, a link, an image, emphasis, a cell or a heading is escaped
    assert re.search(r"(?<!\\)[<>\[\]()*|!#&]", text) is None and "\n" not in text
    assert text.replace("\\", "") == " ".join(hostile.split())  # and nothing else changes
    assert escape_markdown("- a").startswith("\\-") and escape_markdown("1. a").startswith("1\\.")


@pytest.mark.parametrize("value", ["inf", "nan", "1e12"])
def test_an_endless_time_limit_is_refused_by_the_parser(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(TINY), "--plan", "--time-limit", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "leave --time-limit out for none" in err or "positive number" in err


def test_nan_weights_are_refused_when_loaded_and_never_blamed_on_an_attack(tmp_path):
    import hashlib

    import torch
    from safetensors.torch import save_file

    from advbench.attacks.base import _same_bits
    from advbench.errors import AdvbenchError
    from advbench.models.external import load_weights

    model = torch.nn.Linear(3, 2)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state["weight"][0, 0] = float("nan")
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(AdvbenchError, match="NaN or infinite values \\(weight\\)"):
        load_weights(model, path, digest, what="model 'brought'")
    # the attack contract compares bits: the same NaN is unchanged, a moved weight is not
    assert _same_bits(state["weight"], state["weight"].clone())
    assert not _same_bits(state["bias"], state["bias"] + 1)


@pytest.mark.integration  # a second process holds the lock
def test_resume_refuses_a_run_folder_another_process_is_writing(tmp_path):
    import subprocess
    import sys
    import textwrap

    from advbench.config import Suite
    from advbench.errors import AdvbenchError
    from advbench.suite.rundir import RunDir

    suite = Suite.model_validate(_doc())
    first = RunDir.create(tmp_path, suite)
    first.manifest = {"suite": suite.name}
    first.save()
    # another process holds the lock of a folder (as a running `advbench run` does), then this one resumes
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import fcntl, sys, time
            fh = open({str(first.path / ".lock")!r}, "a+")
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.seek(0); fh.truncate(); fh.write("advbench process 4242 on elsewhere"); fh.flush()
            print("locked", flush=True)
            time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        first.release()
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        rd = RunDir(first.path)
        with pytest.raises(AdvbenchError, match="advbench process 4242 on elsewhere is still writing"):
            rd.lock()
    finally:
        holder.kill()
        holder.wait()
    rd.lock()  # the holder is gone (as after kill -9): the folder may be resumed
    rd.release()
