"""advbench.training.checkpoint: damaged and hostile checkpoints are refused with a clear error, never executed.

Kinds of damage tried: a truncated and a bit-flipped weights file, a bit-flipped and a truncated model card,
a card edited into other valid JSON, and pickle payloads (torch.save archives and raw pickles) in place of the
safetensors weights, with every checksum updated (the card's, and the cache manifest's for an entry) so that
only the format check stands between the payload and its execution.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from advbench.errors import CacheError
from advbench.hashing import sha256_file
from advbench.suite.cache import MANIFEST, Cache, cache_key
from advbench.training import load_checkpoint, save_checkpoint
from advbench.training.checkpoint import CARD_FILE, WEIGHTS_FILE, card_digest


def _refresh_checksums(ckpt: Path) -> None:
    """Make card.json agree with whatever is now in weights.safetensors (what an attacker would do)."""
    card = json.loads((ckpt / CARD_FILE).read_text())
    card["weights_sha256"] = sha256_file(ckpt / WEIGHTS_FILE)
    card["card_sha256"] = card_digest(card)
    (ckpt / CARD_FILE).write_text(json.dumps(card))


def _refresh_manifest(entry: Path) -> None:
    manifest = json.loads((entry / MANIFEST).read_text())
    manifest["files"] = {name: sha256_file(entry / name) for name in manifest["files"]}
    (entry / MANIFEST).write_text(json.dumps(manifest))


# -- damaged checkpoints --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["truncate", "flip-middle", "flip-last"])
@pytest.mark.parametrize("which", [WEIGHTS_FILE, CARD_FILE])
def test_damaged_checkpoint_is_refused_by_checksum(tmp_path, which, how, tiny_mlp, checkpoint_card, damage_file):
    path = Path(save_checkpoint(tiny_mlp(), tmp_path / "ck", checkpoint_card()))
    load_checkpoint(path)  # intact: loads
    damage_file(path / which, how)
    with pytest.raises(CacheError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "retrain" in message
    if which == WEIGHTS_FILE:
        assert f"{WEIGHTS_FILE} has sha256" in message
    else:  # a flip inside a value is caught by card_sha256; one that breaks the JSON by the parser
        assert "card_sha256" in message or f"malformed {CARD_FILE}" in message


def test_card_edit_that_stays_valid_json_is_caught(tmp_path, tiny_mlp, checkpoint_card):
    path = Path(save_checkpoint(tiny_mlp(), tmp_path / "ck", checkpoint_card()))
    card = json.loads((path / CARD_FILE).read_text())
    card["num_classes"] = 4  # plausible, well-formed, wrong
    (path / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(CacheError, match=r"card\.json does not match its card_sha256.*corrupt or was edited"):
        load_checkpoint(path)


def test_old_cards_without_card_checksum_still_load(tmp_path, tiny_mlp, checkpoint_card):
    path = Path(save_checkpoint(tiny_mlp(), tmp_path / "ck", checkpoint_card()))
    card = json.loads((path / CARD_FILE).read_text())
    del card["card_sha256"]
    card["format_version"] = 1
    (path / CARD_FILE).write_text(json.dumps(card))
    load_checkpoint(path)


# -- pickle payloads where the weights are expected -----------------------------------------------


@pytest.mark.parametrize("kind", ["torch.save", "pickle"])
def test_pickle_in_place_of_weights_is_refused_unexecuted(tmp_path, kind, tiny_mlp, checkpoint_card, pickle_payload):
    marker = tmp_path / "executed"
    path = Path(save_checkpoint(tiny_mlp(), tmp_path / "ck", checkpoint_card()))
    weights = path / WEIGHTS_FILE
    payload = {"fc.weight": pickle_payload(marker)}
    if kind == "torch.save":
        torch.save(payload, weights)
    else:
        weights.write_bytes(pickle.dumps(payload))
    _refresh_checksums(path)  # the checksums pass: only the format check protects us
    with pytest.raises(CacheError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "never unpickles" in message and str(path) in message and "retrain" in message
    assert ("torch.save" if kind == "torch.save" else "a Python pickle") in message
    assert not marker.exists()


def test_pickle_in_place_of_weights_in_the_cache_is_refused_unexecuted(
    tmp_path, tiny_mlp, checkpoint_card, pickle_payload
):
    marker = tmp_path / "executed"
    cache = Cache(tmp_path / "cache")
    key = cache_key("train", {"n": 1})
    with cache.writer("train", key) as folder:
        save_checkpoint(tiny_mlp(), folder / "checkpoint", checkpoint_card())
    ckpt = cache.path("train", key) / "checkpoint"
    torch.save({"w": pickle_payload(marker)}, ckpt / WEIGHTS_FILE)
    _refresh_checksums(ckpt)
    _refresh_manifest(cache.path("train", key))
    entry = cache.get("train", key)
    assert entry is not None  # every checksum matches the tampered files...
    with pytest.raises(CacheError, match="never unpickles"):
        load_checkpoint(entry.path / "checkpoint")  # ...and the payload is still refused
    assert not marker.exists()


def test_torch_load_with_weights_only_would_also_refuse(tmp_path, pickle_payload):
    """Belt and braces: even torch's own safe loader refuses the payload used above."""
    marker = tmp_path / "executed"
    torch.save({"w": pickle_payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(Exception):
        torch.load(tmp_path / "evil.pt", weights_only=True)
    assert not marker.exists()


def test_the_payload_is_live(tmp_path, pickle_payload):
    """The payloads above do run when unpickled, so their markers' absence proves nothing was unpickled."""
    marker = tmp_path / "executed"
    pickle.loads(pickle.dumps(pickle_payload(marker)))
    assert marker.exists()
