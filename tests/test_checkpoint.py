"""Corrupt and hostile files are detected with a clear error, quarantined and rebuilt, and never executed.

Kinds of damage tried: a truncated and a bit-flipped checkpoint weights file, a bit-flipped and a
truncated model card, the same inside a cache entry (quarantined, then rebuilt through Cache.get), a
truncated and a bit-flipped adversarial set in the cache, a truncated, a bit-flipped and a
non-gzip IDX file in a data folder and in the download cache (downloaded again), and pickle payloads
(torch.save archives and raw pickles) in place of safetensors weights and of DkNN files, with every
checksum updated so that only the format check stands between the payload and its execution.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from advbench.data import load_dataset
from advbench.errors import CacheError, DataError
from advbench.evaluation.dknn import DkNN
from advbench.hashing import sha256_file
from advbench.models import create_model
from advbench.suite.cache import MANIFEST, Cache, cache_key
from advbench.training import load_checkpoint, save_checkpoint
from advbench.training.checkpoint import CARD_FILE, WEIGHTS_FILE, card_digest

ROOT = Path(__file__).resolve().parents[1]


# -- helpers ------------------------------------------------------------------------------------


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset % len(raw)] ^= 0x10
    path.write_bytes(bytes(raw))


def _truncate(path: Path, keep: float = 0.5) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])


def _damage(path: Path, how: str) -> None:
    if how == "truncate":
        _truncate(path)
    elif how == "flip-middle":
        _flip(path, path.stat().st_size // 2)
    elif how == "flip-last":
        _flip(path, -2)
    else:
        raise ValueError(how)


class _Payload:
    """Unpickling this creates ``marker``: the proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("mlp", num_classes=3, input_shape=(1, 4, 4))


def _card() -> dict:
    return {"params": {}, "seed": 0, "metrics": {"test_accuracy": 0.5, "loss": float("nan")}}


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


# -- (a) checkpoints ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["truncate", "flip-middle", "flip-last"])
@pytest.mark.parametrize("which", [WEIGHTS_FILE, CARD_FILE])
def test_damaged_checkpoint_is_refused_by_checksum(tmp_path, which, how):
    path = Path(save_checkpoint(_tiny_model(), tmp_path / "ck", _card()))
    load_checkpoint(path)  # intact: loads
    _damage(path / which, how)
    with pytest.raises(CacheError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "retrain" in message
    if which == WEIGHTS_FILE:
        assert f"{WEIGHTS_FILE} has sha256" in message
    else:  # a flip inside a value is caught by card_sha256; one that breaks the JSON by the parser
        assert "card_sha256" in message or f"malformed {CARD_FILE}" in message


def test_card_edit_that_stays_valid_json_is_caught(tmp_path):
    path = Path(save_checkpoint(_tiny_model(), tmp_path / "ck", _card()))
    card = json.loads((path / CARD_FILE).read_text())
    card["num_classes"] = 4  # plausible, well-formed, wrong
    (path / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(CacheError, match=r"card\.json does not match its card_sha256.*corrupt or was edited"):
        load_checkpoint(path)


def test_old_cards_without_card_checksum_still_load(tmp_path):
    path = Path(save_checkpoint(_tiny_model(), tmp_path / "ck", _card()))
    card = json.loads((path / CARD_FILE).read_text())
    del card["card_sha256"]
    card["format_version"] = 1
    (path / CARD_FILE).write_text(json.dumps(card))
    load_checkpoint(path)


@pytest.mark.parametrize("which", [WEIGHTS_FILE, CARD_FILE])
@pytest.mark.parametrize("how", ["truncate", "flip-middle"])
def test_damaged_checkpoint_in_the_cache_is_quarantined_and_rebuilt(tmp_path, which, how):
    cache = Cache(tmp_path / "cache")
    key = cache_key("train", {"model": "mlp", "seed": 0})
    model = _tiny_model()
    with cache.writer("train", key) as folder:
        save_checkpoint(model, folder / "checkpoint", _card())
    entry = cache.get("train", key)
    assert entry is not None
    _damage(entry.path / "checkpoint" / which, how)
    with pytest.raises(CacheError):  # read directly, the checkpoint's own checksums catch it
        load_checkpoint(entry.path / "checkpoint")
    assert cache.get("train", key) is None  # through the cache: detected, quarantined
    assert cache.corrupt_found == [f"train/{key}"]
    assert not cache.path("train", key).exists()
    quarantined = list((tmp_path / "cache" / "corrupt").iterdir())
    assert len(quarantined) == 1 and quarantined[0].name.startswith(key)
    with cache.writer("train", key) as folder:  # what the runner does next: compute it again
        save_checkpoint(model, folder / "checkpoint", _card())
    entry = cache.get("train", key)
    assert entry is not None
    rebuilt, _ = load_checkpoint(entry.path / "checkpoint")
    x = torch.rand(2, 1, 4, 4)
    assert torch.equal(rebuilt(x), model.eval()(x))


# -- (b) adversarial sets in the cache ----------------------------------------------------------


@pytest.mark.parametrize("how", ["truncate", "flip-middle", "flip-last"])
def test_damaged_adversarial_set_in_the_cache_is_detected(tmp_path, how, caplog):
    cache = Cache(tmp_path)
    key = cache_key("attack", {"source": "x", "eps": 0.1})
    adv = {"x": torch.rand(16, 1, 8, 8), "y": torch.arange(16) % 10}
    with cache.writer("attack", key, {"label": "pgd"}) as folder:
        save_file(adv, str(folder / "adv.safetensors"))
    entry = cache.get("attack", key)
    assert entry is not None and torch.equal(load_file(str(entry.file("adv.safetensors")))["x"], adv["x"])
    _damage(entry.file("adv.safetensors"), how)
    with caplog.at_level("WARNING"):
        assert cache.get("attack", key) is None
    assert "corrupt cache entry attack/" in caplog.text and "does not match the manifest" in caplog.text
    assert cache.corrupt_found == [f"attack/{key}"]
    assert not cache.exists("attack", key)


# -- (c) dataset files ------------------------------------------------------------------------------

_IDX = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def _fake_fashion(folder: Path, n_train: int = 60, n_test: int = 20) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    blobs = {
        _IDX[0]: _idx_bytes(rng.integers(0, 256, (n_train, 28, 28))),
        _IDX[1]: _idx_bytes(np.arange(n_train) % 10),
        _IDX[2]: _idx_bytes(rng.integers(0, 256, (n_test, 28, 28))),
        _IDX[3]: _idx_bytes(np.arange(n_test) % 10),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, blob in blobs.items():
        (folder / name).write_bytes(blob)
    return blobs


@pytest.fixture
def no_system_fashion(tmp_path, monkeypatch):
    """No Debian copy, no $ADVBENCH_DATA, a private download cache, and no network."""
    import advbench.data.builtin as builtin

    monkeypatch.setattr(builtin, "FASHION_MNIST_DEBIAN", tmp_path / "no-debian")
    monkeypatch.delenv("ADVBENCH_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    def offline(url, dest, sha256, **kwargs):
        raise DataError(f"could not download {url}: offline in tests")

    monkeypatch.setattr(builtin, "download", offline)
    return builtin


@pytest.mark.parametrize("how", ["truncate", "flip-middle", "not-gzip"])
@pytest.mark.parametrize("which", [_IDX[0], _IDX[3]])
def test_corrupt_idx_in_data_dir_is_a_clear_data_error(tmp_path, no_system_fashion, which, how):
    folder = tmp_path / "data"
    _fake_fashion(folder)
    assert len(load_dataset("fashion-mnist", data_dir=folder).y_train) == 60
    if how == "not-gzip":
        (folder / which).write_bytes(b"<html>404 Not Found</html>")
    else:
        _damage(folder / which, how)
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", data_dir=folder)
    message = str(info.value)
    assert str(folder / which) in message
    assert "corrupt" in message or "not an IDX file" in message
    assert "replace it with a good copy" in message


def test_corrupt_idx_in_download_cache_is_downloaded_again(tmp_path, no_system_fashion, monkeypatch, caplog):
    builtin = no_system_fashion
    cache = tmp_path / "xdg" / "advbench" / "datasets" / "fashion-mnist"
    good = _fake_fashion(cache)
    monkeypatch.setattr(builtin, "FASHION_MNIST_SHA256", {n: hashlib.sha256(b).hexdigest() for n, b in good.items()})
    fetched: list[str] = []

    def fake_download(url, dest, sha256, **kwargs):
        name = Path(dest).name
        assert hashlib.sha256(good[name]).hexdigest() == sha256
        fetched.append(name)
        Path(dest).write_bytes(good[name])
        return Path(dest)

    monkeypatch.setattr(builtin, "download", fake_download)
    _damage(cache / _IDX[0], "flip-middle")
    with caplog.at_level("WARNING"):
        raw = load_dataset("fashion-mnist")
    assert fetched == [_IDX[0]]  # only the bad file
    assert len(raw.y_train) == 60 and "downloading them again" in caplog.text
    assert (cache / _IDX[0]).read_bytes() == good[_IDX[0]]


def test_corrupt_idx_in_download_cache_offline_says_how_to_fix(tmp_path, no_system_fashion, monkeypatch):
    builtin = no_system_fashion
    cache = tmp_path / "xdg" / "advbench" / "datasets" / "fashion-mnist"
    good = _fake_fashion(cache)
    monkeypatch.setattr(builtin, "FASHION_MNIST_SHA256", {n: hashlib.sha256(b).hexdigest() for n, b in good.items()})
    _truncate(cache / _IDX[2])
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist")
    message = str(info.value)
    assert str(cache / _IDX[2]) in message and "downloading it again failed" in message
    assert "network access" in message and "$ADVBENCH_DATA" in message


# -- (d) pickle payloads where data is expected -----------------------------------------------------


@pytest.mark.parametrize("kind", ["torch.save", "pickle"])
def test_pickle_in_place_of_weights_is_refused_unexecuted(tmp_path, kind):
    marker = tmp_path / "executed"
    path = Path(save_checkpoint(_tiny_model(), tmp_path / "ck", _card()))
    weights = path / WEIGHTS_FILE
    payload = {"fc.weight": _Payload(marker)}
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


def test_pickle_in_place_of_weights_in_the_cache_is_refused_unexecuted(tmp_path):
    marker = tmp_path / "executed"
    cache = Cache(tmp_path / "cache")
    key = cache_key("train", {"n": 1})
    with cache.writer("train", key) as folder:
        save_checkpoint(_tiny_model(), folder / "checkpoint", _card())
    ckpt = cache.path("train", key) / "checkpoint"
    torch.save({"w": _Payload(marker)}, ckpt / WEIGHTS_FILE)
    _refresh_checksums(ckpt)
    _refresh_manifest(cache.path("train", key))
    entry = cache.get("train", key)
    assert entry is not None  # every checksum matches the tampered files...
    with pytest.raises(CacheError, match="never unpickles"):
        load_checkpoint(entry.path / "checkpoint")  # ...and the payload is still refused
    assert not marker.exists()


def _saved_dknn(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    model = _tiny_model().eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 1, 4, 4, generator=g), torch.arange(40) % 3
    dknn = DkNN(model, k=3).fit(x, y).calibrate(x[:12], y[:12])
    return model, dknn.save(tmp_path / "dknn")


def _refresh_dknn_manifest(folder: Path) -> None:
    manifest = json.loads((folder / "dknn.json").read_text())
    manifest["files"] = {name: sha256_file(folder / name) for name in manifest["files"]}
    (folder / "dknn.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("target", ["arrays.npz", "index_0.faiss"])
def test_pickle_in_a_dknn_folder_is_refused_unexecuted(tmp_path, target):
    marker = tmp_path / "executed"
    model, folder = _saved_dknn(tmp_path)
    DkNN.load(folder, model)  # intact: loads
    if target == "arrays.npz":  # an object array: np.load would unpickle it with allow_pickle=True
        buf = io.BytesIO()
        np.savez(buf, y_train=np.array([_Payload(marker)], dtype=object))
        (folder / target).write_bytes(buf.getvalue())
    else:
        (folder / target).write_bytes(pickle.dumps(_Payload(marker)))
    _refresh_dknn_manifest(folder)
    with pytest.raises(CacheError, match=f"could not read the DkNN in {re.escape(str(folder))}"):
        DkNN.load(folder, model)
    assert not marker.exists()


@pytest.mark.parametrize("how", ["truncate", "flip-middle"])
def test_damaged_dknn_file_is_refused_by_checksum(tmp_path, how):
    model, folder = _saved_dknn(tmp_path)
    _damage(folder / "index_0.faiss", how)
    with pytest.raises(CacheError, match="is corrupt: sha256"):
        DkNN.load(folder, model)


# -- no code path can unpickle ----------------------------------------------------------------------

_UNSAFE = {
    r"\btorch\.load\(": "torch.load unpickles (weights_only=False by default in older torch)",
    r"\bpickle\.loads?\(": "pickle.load runs code from the file",
    r"\bcloudpickle\b|\bdill\b|\bjoblib\.load\(": "these unpickle",
    r"allow_pickle\s*=\s*True": "np.load(allow_pickle=True) unpickles object arrays",
    # yaml.load only with the suite loader, a yaml.SafeLoader (checked below)
    r"\byaml\.(unsafe_load|full_load)\(|\byaml\.load\((?![^)]*Loader=SuiteLoader\))": "use yaml.safe_load",
    r"yaml\.Loader\b|UnsafeLoader|FullLoader": "use yaml.safe_load",
    r"\bpd\.read_pickle\(|\bread_pickle\(": "pandas.read_pickle unpickles",
    r"(?<![\w.])eval\(|(?<![\w.])exec\(": "eval/exec run text as code",
}


def test_no_code_path_unpickles_or_evaluates():
    found = []
    for path in sorted((ROOT / "advbench").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for pattern, why in _UNSAFE.items():
                if re.search(pattern, code):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()} ({why})")
    assert not found, "\n".join(found)
    from advbench.suite.validate.yaml_lines import SuiteLoader

    assert issubclass(SuiteLoader, yaml.SafeLoader)  # the one yaml.load allowed above builds no objects


def test_torch_load_with_weights_only_would_also_refuse(tmp_path):
    """Belt and braces: even torch's own safe loader refuses the payload used above."""
    marker = tmp_path / "executed"
    torch.save({"w": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(Exception):
        torch.load(tmp_path / "evil.pt", weights_only=True)
    assert not marker.exists()


def test_the_payload_is_live(tmp_path):
    """The payloads above do run when unpickled, so their markers' absence proves nothing was unpickled."""
    marker = tmp_path / "executed"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()
