"""The read commands on a generated set of damaged run folders: a clear error, never a traceback or a blank exit 0.

Every file of a committed run folder is damaged six ways (missing, emptied, truncated, random bytes, a
symbolic link to a system file, a folder in its place), one copy each, and ``show``, ``report``,
``compare --exact`` and ``power`` are run on every copy. A damaged results file must end in a clear error
(exit 2): the folder's ``SHA256SUMS`` names it. Only damage that leaves every result intact may exit 0: to
files the commands do not read (``config.yaml``, Ray's attempt log), to the checksum list itself when it is
gone (the folder is then read as one saved before checksums), or the per-example table missing (committed
folders drop it).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path

import pytest

from advbench.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
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
