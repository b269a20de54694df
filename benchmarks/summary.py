"""Print the table of figures vs targets from a saved pytest-benchmark JSON file.

Usage: ``python benchmarks/summary.py [FILE.json]`` (default ``.benchmarks/latest.json``, which
``tox -e benchmark`` writes; ``benchmarks/results/latest.json`` is the committed copy quoted in the
README).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import rows_from_json, table


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else ".benchmarks/latest.json")
    data = json.loads(path.read_text())
    rows = rows_from_json(data)
    info = data.get("machine_info", {})
    sys.stdout.write(f"{path}: {data.get('datetime', '?')}, {info.get('cpu', {}).get('brand_raw', '?')}\n")
    sys.stdout.write(table(rows) + "\n")
    missed = [r for r in rows if r.get("ok") is False]
    sys.stdout.write(f"{len(rows)} figures, {len(missed)} targets missed\n")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
