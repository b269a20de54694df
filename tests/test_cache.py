"""The content-addressed cache: atomic writes, checksum verification, corrupt entries rebuilt."""

from __future__ import annotations

import pytest

from advbench.suite.cache import Cache, cache_key


def test_key_is_canonical_and_sensitive():
    assert cache_key("train", {"a": 1, "b": [1, 2]}) == cache_key("train", {"b": [1, 2], "a": 1})
    assert cache_key("train", {"a": 1}) != cache_key("train", {"a": 2})
    assert cache_key("train", {"a": 1}) != cache_key("attack", {"a": 1})


def test_write_then_read_verified(tmp_path):
    cache = Cache(tmp_path)
    key = cache_key("x", {"n": 1})
    assert cache.get("x", key) is None
    with cache.writer("x", key, {"label": "demo"}) as folder:
        (folder / "data.txt").write_text("hello")
    entry = cache.get("x", key)
    assert entry is not None and entry.file("data.txt").read_text() == "hello"
    assert entry.meta == {"label": "demo"}
    assert not list((tmp_path / "tmp").iterdir())


def test_failed_write_publishes_nothing(tmp_path):
    cache = Cache(tmp_path)
    key = cache_key("x", {"n": 2})
    with pytest.raises(RuntimeError):
        with cache.writer("x", key) as folder:
            (folder / "half.bin").write_bytes(b"12")
            raise RuntimeError("killed mid-write")
    assert not cache.exists("x", key)
    assert cache.get("x", key) is None
    assert not list((tmp_path / "tmp").iterdir())


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "manifest"])
def test_corrupt_entry_is_detected_quarantined_and_rebuilt(tmp_path, damage, caplog):
    cache = Cache(tmp_path)
    key = cache_key("x", {"n": 3})
    with cache.writer("x", key) as folder:
        (folder / "data.bin").write_bytes(bytes(range(200)))
    path = cache.path("x", key)
    if damage == "flip":
        raw = bytearray((path / "data.bin").read_bytes())
        raw[10] ^= 0xFF
        (path / "data.bin").write_bytes(bytes(raw))
    elif damage == "truncate":
        (path / "data.bin").write_bytes(b"\x00" * 5)
    elif damage == "delete":
        (path / "data.bin").unlink()
    else:
        (path / "MANIFEST.json").write_text("{not json")
    with caplog.at_level("WARNING"):
        assert cache.get("x", key) is None
    assert "corrupt cache entry" in caplog.text
    assert cache.corrupt_found == [f"x/{key}"]
    assert not path.exists() and any((tmp_path / "corrupt").iterdir())
    with cache.writer("x", key) as folder:  # rebuilt
        (folder / "data.bin").write_bytes(b"fresh")
    assert cache.get("x", key).file("data.bin").read_bytes() == b"fresh"


def test_concurrent_writers_keep_one_entry(tmp_path):
    a, b = Cache(tmp_path), Cache(tmp_path)
    key = cache_key("x", {"n": 4})
    with a.writer("x", key) as fa:
        (fa / "v.txt").write_text("same")
        with b.writer("x", key) as fb:
            (fb / "v.txt").write_text("same")
    assert a.get("x", key).file("v.txt").read_text() == "same"
