"""SVHN (.mat) and CIFAR-10 (binary tarball) loaders on small files in the exact official formats."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from advbench.data import colour as C
from advbench.data import load_dataset
from advbench.errors import DataError
from advbench.hashing import sha256_file


def write_svhn_mat(path: Path, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A cropped-digits file laid out like the official one: X (32, 32, 3, N) uint8, y (N, 1) in 1..10."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)  # 1..10, 10 = digit 0
    scipy.io.savemat(str(path), {"X": x, "y": y}, format="5")
    return x, y


def write_svhn(folder: Path, n_train: int = 30, n_test: int = 20) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_svhn_mat(folder / "train_32x32.mat", n_train, 0)
    write_svhn_mat(folder / "test_32x32.mat", n_test, 1)


def cifar_records(n: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    pixels = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    return np.concatenate([labels[:, None], pixels], axis=1).tobytes(), labels, pixels


def write_cifar_tarball(path: Path, per_batch: int = 8, n_test: int = 10) -> dict[str, np.ndarray]:
    """``cifar-10-binary.tar.gz`` as shipped: cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin + meta."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[np.ndarray]] = {"ytr": [], "xtr": []}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("batches.meta.txt", ("\n".join(C.CIFAR10_CLASSES) + "\n\n").encode())
        for i in range(1, 6):
            raw, y, x = cifar_records(per_batch, i)
            out["ytr"].append(y)
            out["xtr"].append(x)
            add(f"data_batch_{i}.bin", raw)
        raw, yte, xte = cifar_records(n_test, 99)
        add("test_batch.bin", raw)
        add("readme.html", b"<html></html>")
    path.write_bytes(gzip.compress(buf.getvalue()))
    return {"ytr": np.concatenate(out["ytr"]), "xtr": np.concatenate(out["xtr"]), "yte": yte, "xte": xte}


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("ADVBENCH_DATA", raising=False)
    return tmp_path


def test_svhn_reads_official_layout(isolated):
    write_svhn(isolated / "d" / "svhn")
    x_mat, y_mat = write_svhn_mat(isolated / "d" / "svhn" / "train_32x32.mat", 30)
    raw = load_dataset("svhn", data_dir=isolated / "d", download=False)
    assert raw.x_train.shape == (30, 3, 32, 32) and raw.x_test.shape == (20, 3, 32, 32)
    assert raw.x_train.dtype == np.uint8 and raw.y_train.dtype == np.int64
    # HWCN -> NCHW, and label 10 is the digit 0
    assert np.array_equal(raw.x_train[4, 2], x_mat[:, :, 2, 4])
    assert np.array_equal(raw.y_train, y_mat.reshape(-1).astype(np.int64) % 10)
    assert raw.y_train[9] == 0 and raw.y_train[0] == 1
    assert raw.input_shape == (3, 32, 32)


def test_svhn_lookup_order(isolated, monkeypatch):
    write_svhn(isolated / "env", n_train=12)
    write_svhn(isolated / "given", n_train=14)
    monkeypatch.setenv("ADVBENCH_DATA", str(isolated / "env"))
    assert len(load_dataset("svhn", download=False).y_train) == 12
    assert len(load_dataset("svhn", data_dir=isolated / "given", download=False).y_train) == 14
    monkeypatch.delenv("ADVBENCH_DATA")
    with pytest.raises(DataError) as err:
        load_dataset("svhn", data_dir=isolated / "nowhere", download=False)
    msg = str(err.value)
    assert "train_32x32.mat" in msg and "$ADVBENCH_DATA" in msg and "downloads are disabled" in msg
    assert "http://ufldl.stanford.edu/housenumbers/train_32x32.mat" in msg


def test_svhn_truncated_and_bad_labels(isolated):
    d = isolated / "svhn"
    write_svhn(d)
    good = (d / "train_32x32.mat").read_bytes()
    (d / "train_32x32.mat").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"truncated or corrupt|X has shape"):
        load_dataset("svhn", data_dir=d, download=False)
    scipy.io.savemat(str(d / "train_32x32.mat"), {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[0], [3]])})
    with pytest.raises(DataError, match=r"labels outside 1\.\.10"):
        load_dataset("svhn", data_dir=d, download=False)


def test_cifar10_reads_binary_tarball(isolated):
    truth = write_cifar_tarball(isolated / "c" / "cifar-10-binary.tar.gz")
    raw = load_dataset("cifar10", data_dir=isolated / "c", download=False)
    assert raw.x_train.shape == (40, 3, 32, 32) and raw.x_test.shape == (10, 3, 32, 32)
    assert np.array_equal(raw.y_train, truth["ytr"].astype(np.int64))
    # channel-major records: the first 1024 pixel bytes are the red plane, row by row
    assert np.array_equal(raw.x_train[3, 0].reshape(-1), truth["xtr"][3, :1024])
    assert np.array_equal(raw.x_test[7, 2].reshape(-1), truth["xte"][7, 2048:])
    assert raw.class_names == C.CIFAR10_CLASSES


def test_cifar10_extracted_folder(isolated):
    write_cifar_tarball(isolated / "t.tar.gz")
    with tarfile.open(isolated / "t.tar.gz") as tar:
        tar.extractall(isolated / "ext", filter="data")
    raw = load_dataset("cifar10", data_dir=isolated / "ext", download=False)
    assert raw.x_train.shape == (40, 3, 32, 32)


def test_cifar10_truncated_tarball_and_bad_records(isolated):
    p = isolated / "c" / "cifar-10-binary.tar.gz"
    write_cifar_tarball(p)
    good = p.read_bytes()
    p.write_bytes(good[: len(good) - 200])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset("cifar10", data_dir=p.parent, download=False)
    # a record cut short inside an intact archive
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in (*C.CIFAR10_TRAIN, C.CIFAR10_TEST):
            data = cifar_records(3, 0)[0][:-5]
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    p.write_bytes(gzip.compress(buf.getvalue()))
    with pytest.raises(DataError, match="not a whole number of 3073-byte records"):
        load_dataset("cifar10", data_dir=p.parent, download=False)


def test_real_checksums_are_pinned():
    for files in (C.SVHN_FILES, C.CIFAR10_FILES):
        for sha, md5, size in files.values():
            assert len(sha) == 64 and int(sha, 16) and len(md5) == 32 and size > 10_000_000
    assert C.CIFAR10_FILES["cifar-10-binary.tar.gz"][1] == "c32a1d4ab5d03f1284b67883e8d87530"
    assert C.CIFAR10_URL + "cifar-10-binary.tar.gz" == "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"


def _md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def test_download_verified_from_local_source(isolated, monkeypatch):
    """The download path end to end against a local file:// source (no network)."""
    www = isolated / "www"
    truth = write_cifar_tarball(www / "cifar-10-binary.tar.gz")
    src = www / "cifar-10-binary.tar.gz"
    monkeypatch.setattr(C, "CIFAR10_URL", www.as_uri() + "/")
    monkeypatch.setattr(C, "CIFAR10_FILES", {src.name: (sha256_file(src), _md5(src), src.stat().st_size)})
    raw = load_dataset("cifar10")
    cache = isolated / "xdg" / "advbench" / "datasets" / "cifar10" / src.name
    assert cache.is_file() and np.array_equal(raw.y_test, truth["yte"].astype(np.int64))


def test_download_bad_checksum_leaves_nothing(isolated, monkeypatch):
    www = isolated / "www"
    write_svhn(www)
    monkeypatch.setattr(C, "SVHN_URL", www.as_uri() + "/")
    files = {f: ("0" * 64, _md5(www / f), 1) for f in C.SVHN_FILES}
    monkeypatch.setattr(C, "SVHN_FILES", files)
    with pytest.raises(DataError, match="checksum mismatch") as err:
        load_dataset("svhn")
    assert "expected sha256 " + "0" * 64 in str(err.value)
    cache = isolated / "xdg" / "advbench" / "datasets" / "svhn"
    assert not any(p.suffix == ".mat" for p in cache.glob("*"))


def test_corrupt_file_in_cache_is_downloaded_again(isolated, monkeypatch):
    www = isolated / "www"
    write_svhn(www)
    monkeypatch.setattr(C, "SVHN_URL", www.as_uri() + "/")
    monkeypatch.setattr(C, "SVHN_FILES", {f: (sha256_file(www / f), _md5(www / f), 1) for f in C.SVHN_FILES})
    cache = isolated / "xdg" / "advbench" / "datasets" / "svhn"
    cache.mkdir(parents=True)
    (cache / "train_32x32.mat").write_bytes(b"MATLAB 5.0 junk")
    (cache / "test_32x32.mat").write_bytes((www / "test_32x32.mat").read_bytes())
    raw = load_dataset("svhn")
    assert raw.x_train.shape == (30, 3, 32, 32)
    assert sha256_file(cache / "train_32x32.mat") == sha256_file(www / "train_32x32.mat")


def test_list_datasets_shows_where(monkeypatch, tmp_path):
    from advbench.cli.list_cmd import rows

    monkeypatch.setenv("ADVBENCH_DATA", str(tmp_path))
    table = {r["name"]: r for r in rows("datasets")}
    for name in ("mnist", "svhn", "cifar10"):
        assert f"$ADVBENCH_DATA={tmp_path}[/{name}]" in table[name]["looked for in"]
        assert f"datasets/{name}" in table[name]["looked for in"]
