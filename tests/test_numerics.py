"""The numeric code path: recorded in the manifest, part of every cell's key, checked by workers, named by compare."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from advbench.analysis.compare import conclusion_check
from advbench.cli.compare_cmd import path_note
from advbench.config import Suite
from advbench.errors import AdvbenchError
from advbench.suite import numerics
from advbench.suite.context import CellContext, RunOptions
from advbench.suite.worker import payload, worker_context

ROOT = Path(__file__).resolve().parents[1]


def _suite() -> Suite:
    doc = yaml.safe_load((ROOT / "tests" / "suites" / "tiny.yaml").read_text())
    doc["seeds"] = [0]
    return Suite.model_validate(doc)


def test_the_path_names_the_cpu_and_what_each_library_dispatched_to():
    path = numerics.numeric_path("cpu", ["torch", "numpy", "faiss-cpu"])
    import torch

    assert path["device"] == "cpu"
    assert path["torch"]["capability"] == torch.backends.cpu.get_cpu_capability()
    assert path["torch"]["version"] == torch.__version__
    assert path["cpu"].startswith(numerics.cpu()["machine"])
    if torch.backends.mkldnn.is_available():
        assert path["torch"]["onednn"] != "unknown"  # read from oneDNN's verbose header
    assert "GHz" not in path["torch"].get("mkl", "")  # the clock speed is not a code path
    assert path["faiss"]["simd"] and path["numpy"]["dispatch"] is not None
    # only the libraries a cell uses: a training cell's key does not change with faiss's SIMD level
    assert "faiss" not in numerics.numeric_path("cpu", ["torch"])
    assert "numpy" not in numerics.numeric_path("cpu", ["torch"])


def test_reading_the_path_leaves_stdout_working(capfd):
    numerics._onednn_isa()
    numerics._mkl_branch()
    print("after the probe")
    out = capfd.readouterr().out
    assert out == "after the probe\n"  # the verbose lines went to the probe, not to the user


def test_differences_name_each_field_both_ways():
    a = {"device": "cpu", "cpu": "x86_64 A", "torch": {"capability": "AVX512", "onednn": "AVX-512"}}
    b = {"device": "cpu", "cpu": "x86_64 A", "torch": {"capability": "AVX2", "onednn": "AVX-512"}}
    b["faiss"] = {"simd": "AVX2"}
    assert numerics.path_differences(a, a) == []
    assert numerics.path_differences(a, b) == [
        "faiss.simd: (absent) → AVX2",
        "torch.capability: AVX512 → AVX2",
    ]
    assert "torch AVX2" in numerics.describe(b) and "faiss AVX2" in numerics.describe(b)


def test_a_worker_on_another_path_refuses_the_drivers_cells(tmp_path):
    ctx = CellContext.create(_suite(), RunOptions(cache_dir=str(tmp_path / "cache"), progress=False, threads=1))
    body = payload(ctx)
    assert body["numeric_path"] == ctx.plan.numeric_path
    other = json.loads(json.dumps(body))
    other["numeric_path"]["torch"]["capability"] = "SOME_OTHER_ISA"
    other["digest"] = "another run"
    with pytest.raises(AdvbenchError) as err:
        worker_context(other)
    text = str(err.value)
    assert "another numeric path" in text and "SOME_OTHER_ISA" in text
    assert f"torch.capability: SOME_OTHER_ISA → {ctx.plan.numeric_path['torch']['capability']}" in text
    assert worker_context(body).plan.numeric_path == ctx.plan.numeric_path  # the driver's own path is accepted


def test_every_cell_key_carries_the_path_its_libraries_take(tmp_path):
    ctx = CellContext.create(_suite(), RunOptions(cache_dir=str(tmp_path / "cache"), progress=False, threads=1))
    for c in ctx.plan.cells:
        path = c.spec["code"]["path"]
        assert path == numerics.numeric_path("cpu", c.spec["code"]["libraries"]), c.label
    assert set(ctx.plan.numeric_path) >= {"device", "cpu", "torch"}


def test_compare_names_a_path_difference_or_a_missing_record():
    keyed = numerics.numeric_path("cpu", ["torch"])
    other = json.loads(json.dumps(keyed))
    other["torch"]["capability"] = "AVX2" if keyed["torch"]["capability"] != "AVX2" else "DEFAULT"
    a, b = {"numeric_path": {"keyed": keyed}}, {"numeric_path": {"keyed": other}}
    assert "one numeric code path" in path_note(a, a)
    note = path_note(a, b)
    assert "different numeric code paths" in note and "torch.capability" in note
    assert "does not record its numeric code path" in path_note({}, b) and "Run A" in path_note({}, b)


def _claims(folder: Path, verdicts: dict[str, str]) -> Path:
    folder.mkdir(parents=True)
    pd.DataFrame(
        [{"name": n, "verdict": v, "estimate": 0.1, "ci_low": 0.0, "ci_high": 0.2} for n, v in verdicts.items()]
    ).to_csv(folder / "claims.csv", index=False)
    return folder


def test_the_conclusions_agree_when_every_verdict_does(tmp_path):
    a = _claims(tmp_path / "a", {"c1": "supported", "c2": "inconclusive", "c3": "contradicted"})
    b = _claims(tmp_path / "b", {"c1": "supported", "c2": "contradicted", "c4": "supported"})
    table = conclusion_check(a, b).set_index("claim")
    assert table["status"].to_dict() == {"c1": "agrees", "c2": "differs", "c3": "only in A", "c4": "only in B"}
    assert table.loc["c1", "interval_a"] == "[+0, +0.2]"
    assert conclusion_check(a, a)["status"].eq("agrees").all()
    (tmp_path / "none").mkdir()  # a run without claims: A's are only in A
    assert conclusion_check(a, tmp_path / "none")["status"].eq("only in A").all()


@pytest.mark.integration
def test_forcing_another_instruction_set_changes_every_key(tmp_path):
    """Capability forced both ways on one machine (torch's generic path vs what this CPU offers): new keys."""
    script = (
        "import json, yaml; from advbench.config import Suite; "
        "from advbench.suite.context import CellContext, RunOptions; "
        f"doc = yaml.safe_load(open({str(ROOT / 'tests/suites/tiny.yaml')!r})); doc['seeds'] = [0]; "
        f"ctx = CellContext.create(Suite.model_validate(doc), RunOptions(cache_dir={str(tmp_path)!r}, threads=1)); "
        "print(json.dumps({'keys': [c.key for c in ctx.plan.cells], 'path': ctx.plan.numeric_path}))"
    )

    def plan(**env: str) -> dict:
        clean = {k: v for k, v in os.environ.items() if k not in numerics.PATH_VARIABLES}
        out = subprocess.run(
            [sys.executable, "-c", script], env=clean | env, capture_output=True, text=True, check=True, cwd=ROOT
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    native, generic = plan(), plan(ATEN_CPU_CAPABILITY="default", ONEDNN_MAX_CPU_ISA="SSE41")
    if native["path"]["torch"]["capability"] == "DEFAULT":
        pytest.skip("this CPU offers torch no vector instruction set to force away from")
    assert generic["path"]["torch"]["capability"] == "DEFAULT"
    assert native["path"]["torch"]["onednn"] != generic["path"]["torch"]["onednn"]
    assert set(native["keys"]).isdisjoint(generic["keys"])
    assert plan()["keys"] == native["keys"]  # and the native path keys the same cells every time


def test_migrating_keys_without_a_path_needs_the_users_word(tmp_path, capsys):
    from advbench.cli.main import main

    suite = ROOT / "tests" / "suites" / "tiny.yaml"
    assert main(["code", "migrate", str(suite), "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert "carry no numeric code path" in err and "--computed-here" in err
    assert main(["code", "migrate", str(suite), "--cache-dir", str(tmp_path / "cache"), "--computed-here"]) == 0
