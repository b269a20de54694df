"""advbench.config: the suite models (config/suite.py) read an eps given as a quoted number string."""

from __future__ import annotations

from pathlib import Path

import yaml

from advbench.config import Suite

ROOT = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((ROOT / "suites" / "quick.yaml").read_text())


def test_a_quoted_number_string_still_works_for_eps():
    data = dict(BASE) | {"attacks": [{"name": "fgsm", "eps": ["1e-3", "8/255"]}]}
    assert Suite.model_validate(data).attacks[0].eps == [0.001, 8 / 255]
