"""A full disk: the cache and the run folder fail with a clear error and stay consistent.

ENOSPC is simulated two ways: by making the write calls raise it (always), and with a real 1 MiB
tmpfs (only where this process may mount one, e.g. as root in a container; skipped elsewhere).
"""

from __future__ import annotations

import errno
import os
import pickle
import subprocess
from pathlib import Path

import pytest

import advbench.io as io_module
import advbench.suite.cache as cache_module
import advbench.suite.rundir as rundir_module
from advbench.errors import AdvbenchError, CacheError
from advbench.io import DiskFullError, atomic_write_text, is_disk_full
from advbench.suite.cache import Cache, cache_key


def _enospc(path: object = "") -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _populated(tmp_path: Path) -> tuple[Cache, str, dict[str, bytes]]:
    cache = Cache(tmp_path / "cache")
    old = cache_key("x", {"n": "old"})
    with cache.writer("x", old) as folder:
        (folder / "data.bin").write_bytes(b"old entry")
    snapshot = {str(p.relative_to(cache.root)): p.read_bytes() for p in cache.path("x", old).rglob("*") if p.is_file()}
    return cache, old, snapshot


def _assert_consistent(cache: Cache, old: str, snapshot: dict[str, bytes], new: str) -> None:
    assert not cache.path("x", new).exists()  # no half-written entry visible
    assert cache.get("x", new) is None
    assert list((cache.root / "tmp").iterdir()) == []  # the temporary folder is gone
    entry = cache.get("x", old)
    assert entry is not None  # the existing entry is untouched and still verifies
    now = {str(p.relative_to(cache.root)): p.read_bytes() for p in entry.path.rglob("*") if p.is_file()}
    assert now == snapshot
    assert cache.corrupt_found == []


def _assert_message(exc: DiskFullError, cache: Cache) -> None:
    message = str(exc)
    assert f"the cache disk at {cache.root} is full" in message
    assert "free space" in message and "--cache-dir" in message
    assert isinstance(exc, CacheError) and isinstance(exc, AdvbenchError) and isinstance(exc, OSError)
    assert exc.errno == errno.ENOSPC and is_disk_full(exc)


def test_enospc_inside_the_block(tmp_path):
    cache, old, snapshot = _populated(tmp_path)
    new = cache_key("x", {"n": "new"})
    with pytest.raises(DiskFullError) as info:
        with cache.writer("x", new) as folder:
            (folder / "part.bin").write_bytes(b"\0" * 4096)
            raise _enospc(folder / "weights.safetensors")
    _assert_message(info.value, cache)
    assert "after writing 4,096 bytes of it" in str(info.value)
    assert info.value.nbytes == 4096
    assert isinstance(info.value.__cause__, OSError)
    _assert_consistent(cache, old, snapshot, new)
    with cache.writer("x", new) as folder:  # space freed: the same write now succeeds
        (folder / "part.bin").write_bytes(b"\0" * 4096)
    entry = cache.get("x", new)
    assert entry is not None and entry.file("part.bin").stat().st_size == 4096


def test_enospc_as_a_library_error_message(tmp_path):
    """safetensors reports a full disk as its own exception type, with the OS message inside."""
    cache, old, snapshot = _populated(tmp_path)
    new = cache_key("x", {"n": "lib"})

    class SafetensorError(Exception):
        pass

    with pytest.raises(DiskFullError):
        with cache.writer("x", new):
            raise SafetensorError(
                "Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                'message: "No space left on device" })'
            )
    _assert_consistent(cache, old, snapshot, new)


def test_enospc_while_writing_the_manifest(tmp_path, monkeypatch):
    cache, old, snapshot = _populated(tmp_path)
    new = cache_key("x", {"n": "manifest"})
    real_open_temp = io_module._open_temp

    def full_open_temp(path):  # every write goes through advbench.io
        if str(path).endswith(cache_module.MANIFEST):
            raise _enospc(path)
        return real_open_temp(path)

    monkeypatch.setattr(io_module, "_open_temp", full_open_temp)
    with pytest.raises(DiskFullError) as info:
        with cache.writer("x", new) as folder:
            (folder / "data.bin").write_bytes(b"payload")
    _assert_message(info.value, cache)
    monkeypatch.undo()
    _assert_consistent(cache, old, snapshot, new)
    with cache.writer("x", new) as folder:
        (folder / "data.bin").write_bytes(b"payload")
    assert cache.get("x", new) is not None


def test_enospc_while_creating_the_temporary_folder(tmp_path, monkeypatch):
    cache, old, snapshot = _populated(tmp_path)
    new = cache_key("x", {"n": "mkdtemp"})

    def full_mkdtemp(*args, **kwargs):
        raise _enospc()

    monkeypatch.setattr(cache_module.tempfile, "mkdtemp", full_mkdtemp)
    with pytest.raises(DiskFullError) as info:
        with cache.writer("x", new):
            pytest.fail("the block must not run without a folder")
    _assert_message(info.value, cache)
    monkeypatch.undo()
    _assert_consistent(cache, old, snapshot, new)


def test_other_errors_are_not_disk_full(tmp_path):
    cache = Cache(tmp_path)
    with pytest.raises(PermissionError):
        with cache.writer("x", cache_key("x", {})):
            raise PermissionError(errno.EACCES, "denied")
    assert not is_disk_full(ValueError("bad value"))
    assert list((tmp_path / "tmp").iterdir()) == []


def test_disk_full_error_pickles_for_workers():
    err = DiskFullError("the cache disk at /c is full", path="/c", nbytes=12)
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, DiskFullError) and str(back) == str(err)
    assert back.nbytes == 12 and back.errno == errno.ENOSPC


def test_atomic_write_text_enospc_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "run" / "manifest.json"
    atomic_write_text(target, '{"old": true}')
    real_fsync = os.fsync

    def full_fsync(fd):
        raise _enospc()

    monkeypatch.setattr(rundir_module.os, "fsync", full_fsync)
    with pytest.raises(DiskFullError) as info:
        atomic_write_text(target, '{"new": true}' * 100)
    monkeypatch.setattr(rundir_module.os, "fsync", real_fsync)
    message = str(info.value)
    assert f"the disk holding {target} is full" in message and "1,300 bytes" in message and "free space" in message
    assert target.read_text() == '{"old": true}'  # never a mix of old and new
    assert [p.name for p in target.parent.iterdir()] == ["manifest.json"]  # temporary file removed
    atomic_write_text(target, '{"new": true}')  # space freed
    assert target.read_text() == '{"new": true}'


# -- a real full disk ------------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs, where this process may mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True, capture_output=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True, timeout=20)


def test_real_full_disk(tiny_disk):
    cache = Cache(tiny_disk / "cache")
    old = cache_key("x", {"n": "old"})
    with cache.writer("x", old) as folder:
        (folder / "data.bin").write_bytes(os.urandom(200_000))
    snapshot = {str(p.relative_to(cache.root)): p.read_bytes() for p in cache.path("x", old).rglob("*") if p.is_file()}
    new = cache_key("x", {"n": "new"})
    with pytest.raises(DiskFullError) as info:
        with cache.writer("x", new) as folder:
            (folder / "big.bin").write_bytes(os.urandom(2_000_000))  # 2 MB on a 1 MiB disk
    _assert_message(info.value, cache)
    _assert_consistent(cache, old, snapshot, new)
    # atomic_write_text on the same full disk
    filler = tiny_disk / "filler.bin"
    with pytest.raises(OSError):
        filler.write_bytes(os.urandom(2_000_000))
    target = tiny_disk / "run" / "manifest.json"
    with pytest.raises(DiskFullError, match="is full"):
        atomic_write_text(target, "x" * 500_000)
    filler.unlink()  # space freed: both writes succeed
    atomic_write_text(target, "x" * 1000)
    with cache.writer("x", new) as folder:
        (folder / "big.bin").write_bytes(os.urandom(300_000))
    assert cache.get("x", new) is not None and cache.get("x", old) is not None
    assert not list((cache.root / "tmp").iterdir())
