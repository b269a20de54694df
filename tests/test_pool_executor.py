"""The default local executor: cells in worker processes, the same bits as one process, dead workers replaced."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from advbench.analysis.compare import reproduction_check
from advbench.attacks import ATTACKS
from advbench.config import Suite
from advbench.suite.context import RunOptions
from advbench.suite.execute import LocalExecutor
from advbench.suite.pool_executor import MAX_ATTEMPTS, PoolExecutor
from advbench.suite.runner import Runner

ROOT = Path(__file__).resolve().parents[1]


def _suite(attacks: list[dict] | None = None) -> Suite:
    doc = yaml.safe_load((ROOT / "tests" / "suites" / "tiny.yaml").read_text())
    doc["seeds"] = [0]
    if attacks is not None:
        doc["attacks"] = attacks
    return Suite.model_validate(doc)


def _runner(suite: Suite, tmp: Path, name: str, **opts) -> Runner:
    return Runner(
        suite,
        source=f"{name}.yaml",
        options=RunOptions(
            runs_dir=str(tmp / f"runs-{name}"), cache_dir=str(tmp / f"cache-{name}"), progress=False, **opts
        ),
    )


def test_code_registered_by_the_program_runs_in_this_process(tmp_path):
    """A worker process would not have an attack the calling program registered: such a plan stays here."""

    class Local(ATTACKS.get("fgsm")):  # type: ignore[misc]
        pass

    ATTACKS.add("pool-test-local-fgsm", Local, source="user")
    try:
        runner = _runner(_suite([{"name": "pool-test-local-fgsm", "eps": [0.1]}]), tmp_path, "local", workers=2)
        assert runner.plan.local_code and runner.plan.local_code[0].startswith("user:")
        assert isinstance(runner._executor(None), LocalExecutor)  # type: ignore[arg-type]
        plain = _runner(_suite(), tmp_path, "plain", workers=2)
        assert not plain.plan.local_code and isinstance(plain._executor(None), PoolExecutor)  # type: ignore[arg-type]
        assert isinstance(_runner(_suite(), tmp_path, "one", workers=1)._executor(None), LocalExecutor)  # type: ignore[arg-type]
    finally:
        ATTACKS.unregister("pool-test-local-fgsm")


@pytest.mark.integration
def test_a_pool_run_equals_an_in_process_run_bit_for_bit(tmp_path):
    pool = _runner(_suite(), tmp_path, "pool", workers=2)
    pool_dir = pool.run()
    alone = _runner(_suite(), tmp_path, "alone", workers=1)
    alone_dir = alone.run()
    assert pool_dir.manifest["local"]["workers"] == 2 and pool_dir.manifest["local"]["threads_per_cell"] == 1
    assert "local" not in alone_dir.manifest
    assert {c.key for c in pool.plan.cells} == {c.key for c in alone.plan.cells}
    table = reproduction_check(pool_dir.results, alone_dir.results)
    assert len(table) >= 10 and (table["status"] == "identical").all(), table.to_string()


_PLUGIN = """
import os
from pathlib import Path

from advbench.attacks import register_attack
from advbench.attacks.fgsm import FGSM

MARK = Path({mark!r})


@register_attack("pool-test-dies-once", norm="linf", targeted=False)
class DiesOnce(FGSM):
    def run(self, model, x, y, threat, generator):
        if not MARK.exists():
            MARK.write_text("died")
            os._exit(9)  # as the OOM killer would: no exception, no cleanup
        return super().run(model, x, y, threat, generator)


@register_attack("pool-test-always-dies", norm="linf", targeted=False)
class AlwaysDies(FGSM):
    def run(self, model, x, y, threat, generator):
        os._exit(9)
"""


@pytest.fixture
def dying_plugins(tmp_path, monkeypatch, reload_plugins, install_dist):
    """An installed plugin distribution (on sys.path, so worker processes find it too) whose attacks kill their
    process: one once, one every time."""
    site = tmp_path / "site"
    install_dist(
        site,
        "advbench-pool-test",
        "1.0",
        "[advbench.attacks]\npooltest = advbench_pool_test\n",
        {"advbench_pool_test.py": _PLUGIN.format(mark=str(tmp_path / "died-once"))},
    )
    monkeypatch.syspath_prepend(str(site))
    reload_plugins(ATTACKS, "advbench_pool_test")


@pytest.mark.integration
def test_a_dead_worker_is_replaced_and_its_cell_retried(tmp_path, dying_plugins):
    attacks = [
        {"name": "fgsm", "eps": [0.1]},
        {"name": "pool-test-dies-once", "eps": [0.1]},
        {"name": "pool-test-always-dies", "eps": [0.1]},
    ]
    runner = _runner(_suite(attacks), tmp_path, "dying", workers=2)
    assert not runner.plan.local_code  # an installed plugin: workers load it through its entry point
    runner.run()
    failed = {f["cell"]: f["error"] for f in runner.failures}
    always = [c for c in failed if "pool-test-always-dies" in c and c.startswith("attack")]
    assert len(always) == 2 and all(f"died {MAX_ATTEMPTS} times" in failed[c] for c in always)
    # the cell whose worker died once was retried and computed; the others were never touched
    assert not any("pool-test-dies-once" in c or "attack fgsm" in c for c in failed)
    outcomes = runner.results.outcomes
    assert {"fgsm", "pool-test-dies-once"} <= set(outcomes["attack"])


def _children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (from /proc)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(stat.parent.name))
    return out


@pytest.mark.integration
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads child processes from /proc (Linux)")
def test_workers_end_when_their_driver_is_killed(tmp_path):
    """A driver killed with SIGKILL cannot shut its pool down: its workers must still end, not compute on
    (writing to the cache) or wait on the pool's queue forever."""
    import os
    import signal
    import subprocess
    import sys
    import time

    suite = yaml.safe_load((ROOT / "tests" / "suites" / "tiny.yaml").read_text())
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(suite))
    cmd = [sys.executable, "-m", "advbench.cli.main", "-q", "run", str(tmp_path / "tiny.yaml"), "--workers", "2",
           "--cache-dir", str(tmp_path / "cache"), "--runs-dir", str(tmp_path / "runs"),
           "--report", str(tmp_path / "tiny.md")]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, workers = time.time() + 120, set()
        while time.time() < deadline and len(workers) < 2 and proc.poll() is None:
            workers = {p for p in _children(proc.pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()}
            time.sleep(0.1)
        assert len(workers) >= 2, "the run never started its worker processes"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in workers):
        time.sleep(0.1)
    alive = [p for p in workers if Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text()]
    assert not alive, f"worker processes {alive} outlived their killed driver"
