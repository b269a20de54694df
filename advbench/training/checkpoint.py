"""Checkpoints: ``weights.safetensors`` plus a JSON model card, written atomically and verified on load.

A checkpoint directory holds two files, and a third, ``regularisers.safetensors``, when the model
was trained with regularisers that have a state (learned temperatures, class centres): its sha256
is in the card and :func:`load_regulariser_state` checks it. The card records what is needed to rebuild the
model through the registry (``architecture``, ``params``, ``num_classes``, ``input_shape``), what
produced it (recipe, seed, data hash, library versions), its final metrics, the sha256 of the
weights file and a sha256 of the card's own content (``card_sha256``), all of which
:func:`load_checkpoint` checks before trusting anything. The weights are read only as safetensors (a
header and raw tensor bytes): a pickle or ``torch.save`` archive in their place is refused, never
unpickled. No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import torch
from safetensors.torch import load_file, save_file

import advbench
from advbench.errors import CacheError
from advbench.hashing import sha256_file
from advbench.models import Classifier, create_model

__all__ = [
    "CARD_FILE",
    "REGULARISERS_FILE",
    "WEIGHTS_FILE",
    "card_digest",
    "library_versions",
    "load_checkpoint",
    "load_regulariser_state",
    "save_checkpoint",
]

WEIGHTS_FILE = "weights.safetensors"
CARD_FILE = "card.json"
REGULARISERS_FILE = "regularisers.safetensors"
FORMAT_VERSION = 2  # 2: the card carries card_sha256
_FIX = "delete the checkpoint (or its cache entry) and retrain"


def card_digest(card: Mapping[str, Any]) -> str:
    """sha256 of a card's canonical JSON without its ``card_sha256`` field (which holds this digest)."""
    body = {k: v for k, v in card.items() if k != "card_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=_jsonable, allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_safetensors_header(path: Path, root: Path) -> None:
    """Refuse anything but a safetensors file before a parser sees it (a pickle is never loaded)."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(9)
    n = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    if len(head) == 9 and 2 <= n <= size - 8 and head[8:9] == b"{":
        return
    if head[:2] == b"PK":
        what = "a zip archive, as written by torch.save"
    elif head[:1] == b"\x80" or head[:1] in (b"(", b"c", b"]", b"}"):
        what = "a Python pickle"
    else:
        what = f"not a safetensors file (it starts with {head[:8]!r}, {size} bytes)"
    raise CacheError(
        f"checkpoint {str(root)!r}: {path.name} is {what}; advbench reads weights only as safetensors and "
        f"never unpickles them (unpickling can run arbitrary code). It was not loaded: {_FIX}."
    )


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a trained model."""
    return {
        "advbench": advbench.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
        "python": platform.python_version(),
    }


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):  # pydantic configs (RecipeConfig, ...)
        return obj.model_dump(mode="json")
    if isinstance(obj, (tuple, set)):
        return list(obj)
    if isinstance(obj, (np.generic, torch.Tensor)):
        return obj.item()
    raise TypeError(f"the model card holds a {type(obj).__name__}, which is not JSON-serialisable")


def save_checkpoint(
    model: Classifier,
    directory: str | os.PathLike[str],
    card: Mapping[str, Any],
    *,
    overwrite: bool = False,
    regularisers: Mapping[str, torch.Tensor] | None = None,
) -> str:
    """Write ``model``'s weights and ``card`` to ``directory`` atomically; returns the directory.

    The files are written into a temporary sibling directory that is renamed into place, so a
    crash never leaves a half-written checkpoint. ``card`` should hold ``params`` (the architecture's
    keyword arguments), the recipe, seed, data hash and final metrics; ``architecture``,
    ``num_classes``, ``input_shape``, ``library_versions`` and ``weights_sha256`` are filled in.
    An existing checkpoint raises :class:`CacheError` unless ``overwrite``. A non-empty
    ``regularisers`` (the trainer's ``TrainResult.regulariser_state``) is written to
    ``regularisers.safetensors`` with its sha256 in the card (``regularisers_sha256``).
    """
    target = Path(directory)
    if target.exists() and not overwrite:
        raise CacheError(f"checkpoint {str(target)!r} already exists; pass overwrite=True or remove it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "advbench", "arch": model.arch})
        extra: dict[str, Any] = {}
        if regularisers:
            reg_state = {k: v.detach().cpu().contiguous() for k, v in regularisers.items()}
            save_file(reg_state, str(tmp / REGULARISERS_FILE), metadata={"format": "advbench-regularisers"})
            extra["regularisers_sha256"] = sha256_file(tmp / REGULARISERS_FILE)
        full = {
            "format_version": FORMAT_VERSION,
            "params": {},
            **dict(card),
            "architecture": card.get("architecture", model.arch),
            "num_classes": model.num_classes,
            "input_shape": list(model.input_shape),
            "library_versions": library_versions(),
            "weights_sha256": sha256_file(tmp / WEIGHTS_FILE),
            **extra,
        }
        if full["architecture"] != model.arch:
            raise ValueError(f"card says architecture {full['architecture']!r} but the model is {model.arch!r}")
        full["format_version"] = FORMAT_VERSION
        full = json.loads(json.dumps(full, default=_jsonable, allow_nan=True))  # the values as read back
        full["card_sha256"] = card_digest(full)
        text = json.dumps(full, indent=2, sort_keys=True, allow_nan=True)
        (tmp / CARD_FILE).write_text(text + "\n", encoding="utf-8")
        for f in (WEIGHTS_FILE, CARD_FILE, *((REGULARISERS_FILE,) if extra else ())):
            with (tmp / f).open("rb") as fh:
                os.fsync(fh.fileno())
        if target.exists():  # overwrite: move the old one aside, then swap
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(target)


def load_checkpoint(directory: str | os.PathLike[str]) -> tuple[Classifier, dict[str, Any]]:
    """Rebuild the model saved in ``directory`` through the registry; returns ``(model in eval mode, card)``.

    Raises :class:`CacheError` if a file is missing, the card is malformed or altered (its
    ``card_sha256``), the weights' sha256 differs from the card's, the weights file is not a
    safetensors file (a pickle is refused unread), or the weights do not fit the architecture.
    """
    root = Path(directory)
    card_path, weights_path = root / CARD_FILE, root / WEIGHTS_FILE
    for p in (card_path, weights_path):
        if not p.is_file():
            raise CacheError(f"checkpoint {str(root)!r} is incomplete: {p.name} is missing; {_FIX}")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
        if not isinstance(card, dict):
            raise TypeError(f"expected a JSON object, got a {type(card).__name__}")
        if card.get("format_version") != 1:  # version 1 cards predate card_sha256
            if card_digest(card) != card.get("card_sha256"):
                raise CacheError(
                    f"checkpoint {str(root)!r}: {CARD_FILE} does not match its card_sha256 (sha256 "
                    f"{card_digest(card)[:12]}..., recorded {str(card.get('card_sha256'))[:12]}...); the card is "
                    f"corrupt or was edited: {_FIX}"
                )
        arch, params = card["architecture"], dict(card.get("params", {}))
        num_classes, input_shape = int(card["num_classes"]), tuple(card["input_shape"])
        expected = str(card["weights_sha256"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CacheError(
            f"checkpoint {str(root)!r}: malformed {CARD_FILE} ({type(exc).__name__}: {exc}); {_FIX}"
        ) from None
    actual = sha256_file(weights_path)
    if actual != expected:
        raise CacheError(
            f"checkpoint {str(root)!r}: {WEIGHTS_FILE} has sha256 {actual[:12]}..., the card expects "
            f"{str(expected)[:12]}...; the file is corrupt or was replaced: {_FIX}."
        )
    _check_safetensors_header(weights_path, root)
    try:
        state = load_file(str(weights_path), device="cpu")
        model = create_model(arch, num_classes=num_classes, input_shape=input_shape, **params)  # type: ignore[arg-type]
        model.load_state_dict(state, strict=True)
    except (RuntimeError, OSError, ValueError, TypeError, safetensors.SafetensorError) as exc:
        raise CacheError(
            f"checkpoint {str(root)!r}: the weights do not fit {arch!r} with params {params} "
            f"({type(exc).__name__}: {exc})"
        ) from None
    return model.eval(), card


def load_regulariser_state(directory: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The regularisers' state saved with the checkpoint in ``directory`` (empty when it has none).

    Keys are ``"{regulariser}.{state key}"``. Raises :class:`CacheError` if the card names a file that
    is missing, whose sha256 differs, or that is not a safetensors file.
    """
    root = Path(directory)
    try:
        card = json.loads((root / CARD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CacheError(
            f"checkpoint {str(root)!r}: cannot read {CARD_FILE} ({type(exc).__name__}: {exc}); {_FIX}"
        ) from None
    expected = card.get("regularisers_sha256") if isinstance(card, dict) else None
    if expected is None:
        return {}
    path = root / REGULARISERS_FILE
    if not path.is_file():
        raise CacheError(f"checkpoint {str(root)!r} is incomplete: {REGULARISERS_FILE} is missing; {_FIX}")
    actual = sha256_file(path)
    if actual != expected:
        raise CacheError(
            f"checkpoint {str(root)!r}: {REGULARISERS_FILE} has sha256 {actual[:12]}..., the card expects "
            f"{str(expected)[:12]}...; the file is corrupt or was replaced: {_FIX}."
        )
    _check_safetensors_header(path, root)
    return load_file(str(path), device="cpu")
