"""The one-time migration of cache entries from the per-kind code versions to per-component identities.

Under the legacy scheme, a cell's key carries one hash per cell kind (the files each kind listed) and
the versions of advbench and of every library of its stage, where the component scheme
(:mod:`advbench.codeversion`) carries per-component identities. The component scheme's first lock
(every component at version 1) is the code of those keys, moved between modules without changing a
number (``advbench compare --exact`` on ``suites/quick.yaml`` from an empty cache). So a cell whose
components are all still at version 1 may take the entry its legacy key names: :func:`migrate`
recomputes each cell's legacy key and publishes that entry under the new key. Cells with any other
component version, with a plugin or user component, or that the legacy scheme keyed without a code
version (the cross-seed transfer cells) are left to be recomputed.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from advbench.suite.cache import Cache, cache_key
from advbench.suite.plan import Plan

__all__ = ["LEGACY_KIND_VERSIONS", "Migration", "legacy_keys", "migrate"]

log = logging.getLogger(__name__)

#: The per-kind code versions of the legacy scheme in its final state: the ones the keys of the
#: committed powered run's cells carry.
LEGACY_KIND_VERSIONS = {
    "train": "952d3b2dffe78a6718af27449fc73cb40d9d517842d0830a9bb4d4ea94b4a3ba",
    "clean-eval": "fdee1ae1edef1e3e3ebd8e7eaa93cab4acce20f34b9e15585093836663fbfe08",
    "attack": "fdee1ae1edef1e3e3ebd8e7eaa93cab4acce20f34b9e15585093836663fbfe08",
    "transfer": "fdee1ae1edef1e3e3ebd8e7eaa93cab4acce20f34b9e15585093836663fbfe08",
    "dknn-index": "fdee1ae1edef1e3e3ebd8e7eaa93cab4acce20f34b9e15585093836663fbfe08",
    "dknn-score": "577f2ded8db48e8dc4b8352ec103eacb1b4bbc0fc4edc6ac5511e61eca529829",
}
#: ``advbench.__version__`` of that legacy code (the legacy keys carry it).
LEGACY_ADVBENCH_VERSION = "0.2.0"
#: The component version that is the legacy code.
MIGRATABLE_VERSION = "1"

_NOTE = (
    "per-kind code versions (d48f127) -> per-component identity, code unchanged at version 1; "
    "filed under this machine's numeric path on the user's word (--computed-here)"
)


def _version(lib: str) -> str:
    try:
        return importlib.metadata.version(lib)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _legacy_versions(*libs: str) -> dict[str, str]:
    """The legacy ``versions`` part of a spec (faiss-cpu's version was keyed as ``faiss``)."""
    return {"advbench": LEGACY_ADVBENCH_VERSION, "torch": _version("torch"), "numpy": _version("numpy")} | {
        lib.removesuffix("-cpu"): _version(lib) for lib in libs
    }


def _migratable(spec: dict[str, Any]) -> bool:
    """Whether every component of the cell is an advbench one at the version that is the legacy code."""
    idents: list[str] = []
    for v in spec["code"]["components"].values():
        idents.extend(v if isinstance(v, list) else [v])
    return all(i.startswith("advbench.") and i.rpartition("@")[2] == MIGRATABLE_VERSION for i in idents)


def legacy_keys(plan: Plan) -> dict[str, str]:
    """``{new key: legacy key}`` for the cells of ``plan`` that the migration may carry over."""
    out: dict[str, str] = {}
    legacy = out.get  # a new key's legacy key, for the inputs (earlier in plan order) already carried

    for c in plan.cells:
        s = c.spec
        if not _migratable(s):
            continue
        code = {"code": LEGACY_KIND_VERSIONS[c.kind], "threads": s["code"]["threads"]}
        spec: dict[str, Any] | None
        if c.kind == "train":
            spec = {k: s[k] for k in ("model", "seed", "probe", "data")} | {
                "versions": _legacy_versions("safetensors"),
                "code": code,
            }
        elif c.kind == "clean-eval":
            model = legacy(s["model"])
            spec = None if model is None else {"model": model, "test": s["test"], "n_grad": s["n_grad"], "code": code}
            if spec is not None and "validation" in s:
                spec["validation"] = s["validation"]
        elif c.kind == "dknn-index":
            model = legacy(s["model"])
            spec = (
                None
                if model is None
                else {
                    "model": model,
                    "dknn": s["dknn"],
                    "data": s["data"],
                    "versions": _legacy_versions("faiss-cpu"),
                    "code": code,
                }
            )
        elif c.kind == "attack":
            source = legacy(s["source"])
            spec = (
                None
                if source is None
                else {k: s[k] for k in ("attack", "eps", "n", "seed", "data")}
                | {
                    "source": source,
                    "versions": _legacy_versions("torchattacks", "foolbox"),
                    "code": code,
                }
            )
            if spec is not None and "dknn_index" in s:
                index = legacy(s["dknn_index"])
                spec = None if index is None else spec | {"dknn_index": index}
        elif c.kind == "transfer" and "target_seed" not in s:  # cross-seed cells had no code version: recompute
            adv, targets = legacy(s["adv"]), {m: legacy(k) for m, k in s["targets"].items()}
            ok = adv is not None and None not in targets.values()
            spec = {"adv": adv, "targets": targets, "versions": _legacy_versions(), "code": code} if ok else None
        elif c.kind == "dknn-score":
            index, sets = legacy(s["index"]), [legacy(k) for k in s["adv"]]
            ok = index is not None and None not in sets
            spec = (
                None
                if not ok
                else {k: s[k] for k in ("ood", "n", "n_ood")}
                | {
                    "index": index,
                    "adv": sorted(a for a in sets if a is not None),
                    "versions": _legacy_versions("faiss-cpu"),
                    "code": code,
                }
            )
        else:
            spec = None
        if spec is not None:
            out[c.key] = cache_key(c.kind, spec)
    return out


@dataclass
class Migration:
    """What :func:`migrate` did: cells carried over per kind, and why the others were not."""

    adopted: Counter[str] = field(default_factory=Counter)
    already: Counter[str] = field(default_factory=Counter)
    absent: Counter[str] = field(default_factory=Counter)
    not_migratable: Counter[str] = field(default_factory=Counter)


def migrate(plan: Plan, cache: Cache) -> Migration:
    """Publish every legacy entry of ``plan``'s cells under its new key; the legacy entries stay."""
    result = Migration()
    keys = legacy_keys(plan)
    for c in plan.cells:
        if cache.exists(c.kind, c.key):
            result.already[c.kind] += 1
        elif c.key not in keys:
            result.not_migratable[c.kind] += 1
        elif cache.adopt(c.kind, keys[c.key], c.key, _NOTE):
            result.adopted[c.kind] += 1
            log.debug("migrated %s: %s -> %s", c.label, keys[c.key][:12], c.key[:12])
        else:
            result.absent[c.kind] += 1
    return result
