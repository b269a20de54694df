"""The rest of the package on its way to mypy strict: the number of strict errors may only go down.

The core layers are strict in ``pyproject.toml`` (``[[tool.mypy.overrides]]``); this counts what
``mypy --strict advbench`` still reports in the rest and fails when it exceeds :data:`BUDGET`. Lower the
budget when you fix some (the script says so), and add a module to the strict overrides once it has none.
Run by ``.ci/run``; ``python scripts/mypy_ratchet.py`` from the repository root.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

#: ``mypy --strict advbench`` errors allowed outside the strict layers (measured 2026-12-07: 51)
BUDGET = 51


def main() -> int:
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "advbench"], cwd=root, capture_output=True, text=True, check=False
    )
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    per_file = Counter(line.split(":", 1)[0] for line in errors)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr.strip()
    if not errors and not re.match(r"Success", summary):
        sys.stderr.write(f"mypy_ratchet: mypy did not run as expected: {summary}\n")
        return 2
    if len(errors) > BUDGET:
        worst = ", ".join(f"{f} ({n})" for f, n in per_file.most_common(5))
        sys.stderr.write(
            f"mypy_ratchet: {len(errors)} strict errors, more than the budget of {BUDGET}; new code must type-check "
            f"under --strict (run `mypy --strict advbench`; most in: {worst})\n"
        )
        return 1
    if len(errors) < BUDGET:
        sys.stdout.write(f"mypy_ratchet: {len(errors)} strict errors (budget {BUDGET}): lower BUDGET in {__file__}\n")
    else:
        sys.stdout.write(f"mypy_ratchet: {len(errors)} strict errors, at the budget\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
