"""Datasets: IDX reading, the lookup order, verified downloads from a loopback server, seeded splits."""

from __future__ import annotations

import functools
import gzip
import http.server
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from advbench.data import RawDataset, load_dataset, make_splits
from advbench.data import builtin as B
from advbench.data.idx import read_idx, sha256_file
from advbench.errors import DataError

# -- generated IDX files ----------------------------------------------------------------------


def idx_bytes(arr: np.ndarray) -> bytes:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    header = bytes([0, 0, codes[arr.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.tobytes()


def write_idx(path: Path, arr: np.ndarray, *, gz: bool = True) -> Path:
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data, compresslevel=1) if gz else data)
    return path


def write_idx_set(folder: Path, n_train: int, n_test: int = 5, *, seed: int = 0) -> Path:
    """The four standard files of a tiny MNIST-like dataset (n_train identifies the folder)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    return folder


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_read_idx_roundtrip(tmp_path, gz):
    images = np.random.default_rng(1).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 9, 9, 4], dtype=np.uint8)
    floats = np.linspace(-1, 1, 6, dtype=">f4").reshape(2, 3)
    for name, arr in (("img", images), ("lab", labels), ("f", floats)):
        got = read_idx(write_idx(tmp_path / name, arr, gz=gz))
        assert got.shape == arr.shape and got.dtype == arr.dtype and np.array_equal(got, arr)


def test_truncated_file_fails_clearly(tmp_path):
    good = idx_bytes(np.zeros((10, 28, 28), np.uint8))
    raw = tmp_path / "raw-images"
    raw.write_bytes(good[:-100])
    with pytest.raises(DataError, match=r"truncated or corrupt.*replace it"):
        read_idx(raw)
    gz = tmp_path / "cut.gz"
    gz.write_bytes(gzip.compress(good)[:-30])  # a download cut short
    with pytest.raises(DataError, match=r"cut\.gz: not a valid gzip file.*truncated.*replace it"):
        read_idx(gz)
    header = tmp_path / "header-only"
    header.write_bytes(good[:6])
    with pytest.raises(DataError, match="header is truncated"):
        read_idx(header)


def test_corrupt_files_fail_clearly(tmp_path):
    bad_gzip = tmp_path / "bad.gz"
    bad_gzip.write_bytes(b"\x1f\x8b\x08\x00" + b"garbage" * 20)
    with pytest.raises(DataError, match=r"not a valid gzip file.*corrupt.*replace it"):
        read_idx(bad_gzip)
    flipped = bytearray(gzip.compress(idx_bytes(np.arange(50, dtype=np.uint8))))
    flipped[-6] ^= 0xFF  # damage the CRC / length trailer
    (tmp_path / "crc.gz").write_bytes(bytes(flipped))
    with pytest.raises(DataError, match="not a valid gzip file"):
        read_idx(tmp_path / "crc.gz")
    html = tmp_path / "error-page.gz"
    html.write_bytes(gzip.compress(b"<html>Access denied</html>"))  # a proxy's error page
    with pytest.raises(DataError, match=r"not an IDX file \(magic number '3c68746d'.*replace it"):
        read_idx(html)
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "absent")


# -- lookup order -----------------------------------------------------------------------------


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No real Debian files, a private cache and no $ADVBENCH_DATA."""
    monkeypatch.setattr(B, "FASHION_MNIST_DEBIAN", tmp_path / "debian")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("ADVBENCH_DATA", raising=False)
    return tmp_path


def test_lookup_order(isolated, monkeypatch):
    t = isolated
    write_idx_set(t / "given", 11)
    write_idx_set(t / "env" / "fashion-mnist", 12)  # $ADVBENCH_DATA/<name> is looked in too
    write_idx_set(t / "debian", 13)
    write_idx_set(t / "xdg" / "advbench" / "datasets" / "fashion-mnist", 14)
    monkeypatch.setenv("ADVBENCH_DATA", str(t / "env"))

    def n_train(**kw) -> int:
        raw = load_dataset("fashion-mnist", download=False, **kw)
        assert raw.x_train.shape[1:] == (1, 28, 28) and raw.num_classes == 10
        return len(raw.y_train)

    assert n_train(data_dir=t / "given") == 11
    assert n_train() == 12
    monkeypatch.delenv("ADVBENCH_DATA")
    assert n_train() == 13
    monkeypatch.setattr(B, "FASHION_MNIST_DEBIAN", t / "nowhere")
    assert n_train() == 14
    raw = load_dataset("fashion-mnist", data_dir=t / "given", download=False)
    assert raw.origin == str(t / "given") and raw.class_names[0] == "T-shirt/top"


def test_nothing_found_offline_message(isolated):
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", data_dir=isolated / "empty", download=False)
    msg = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "$ADVBENCH_DATA" in msg
    assert all(f in msg for f in B.IDX_FILES) and str(isolated / "empty") in msg


# -- downloads from a real HTTP server on loopback ---------------------------------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def server(tmp_path):
    """An http.server on 127.0.0.1 serving tmp_path/www; yields (base URL, folder)."""
    www = tmp_path / "www"
    www.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", www
    httpd.shutdown()
    httpd.server_close()


def serve_fashion(monkeypatch, url: str, www: Path, *, n_train: int = 20) -> dict[str, str]:
    write_idx_set(www, n_train)
    sums = {f: sha256_file(www / f) for f in B.IDX_FILES}
    monkeypatch.setattr(B, "FASHION_MNIST_URL", url)
    monkeypatch.setattr(B, "FASHION_MNIST_SHA256", sums)
    return sums


def cache_dir(root: Path) -> Path:
    return root / "xdg" / "advbench" / "datasets" / "fashion-mnist"


def test_download_success(isolated, server, monkeypatch):
    url, www = server
    serve_fashion(monkeypatch, url, www, n_train=20)
    raw = load_dataset("fashion-mnist")
    assert len(raw.y_train) == 20 and raw.origin == str(cache_dir(isolated))
    assert sorted(p.name for p in cache_dir(isolated).iterdir()) == sorted(B.IDX_FILES)  # no temp files left
    for f in B.IDX_FILES:
        assert (cache_dir(isolated) / f).read_bytes() == (www / f).read_bytes()
    for f in B.IDX_FILES:
        (www / f).unlink()
    assert len(load_dataset("fashion-mnist").y_train) == 20  # now served from the cache


def test_download_checksum_mismatch_leaves_nothing(isolated, server, monkeypatch):
    url, www = server
    sums = serve_fashion(monkeypatch, url, www)
    sums["train-images-idx3-ubyte.gz"] = "0" * 64
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist")
    msg = str(info.value)
    assert "checksum mismatch" in msg and "train-images-idx3-ubyte.gz" in msg and "0" * 64 in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    leftovers = list(cache_dir(isolated).iterdir()) if cache_dir(isolated).exists() else []
    assert leftovers == []  # neither the bad file nor a partial / temporary one


def test_download_404_offline_message(isolated, server, monkeypatch):
    url, _www = server  # serves nothing
    monkeypatch.setattr(B, "FASHION_MNIST_URL", url)
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist")
    msg = str(info.value)
    assert "404" in msg and "apt-get install dataset-fashion-mnist" in msg and "$ADVBENCH_DATA" in msg
    assert all(f in msg for f in B.IDX_FILES)
    assert not cache_dir(isolated).exists() or list(cache_dir(isolated).iterdir()) == []


def test_download_unreachable_port(isolated, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(B, "FASHION_MNIST_URL", f"http://127.0.0.1:{port}/")
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist")
    msg = str(info.value)
    assert "could not download" in msg and "refused" in msg.lower()
    assert "apt-get install dataset-fashion-mnist" in msg and "$ADVBENCH_DATA" in msg
    assert not cache_dir(isolated).exists() or list(cache_dir(isolated).iterdir()) == []


# -- the real Fashion-MNIST files --------------------------------------------------------------

REAL = B.FASHION_MNIST_DEBIAN
needs_real = pytest.mark.skipif(
    not all((REAL / f).is_file() for f in B.IDX_FILES),
    reason=f"Fashion-MNIST not installed in {REAL} (apt-get install dataset-fashion-mnist)",
)


@needs_real
def test_real_fashion_mnist():
    for f in B.IDX_FILES:
        assert sha256_file(REAL / f) == B.FASHION_MNIST_SHA256[f], f"{f}: the pinned checksum is wrong"
    raw = B.fashion_mnist(data_dir=REAL, download=False)
    assert raw.x_train.shape == (60000, 1, 28, 28) and raw.x_test.shape == (10000, 1, 28, 28)
    assert raw.x_train.dtype == np.uint8
    assert set(np.unique(raw.y_train)) == set(range(10)) == set(np.unique(raw.y_test))
    splits = make_splits(raw, calibration=750, seed=0)
    assert len(splits.train) + len(splits.calibration) + len(splits.test) == 70000
    for s in (splits.train, splits.calibration, splits.test):
        assert s.x.dtype == torch.float32 and s.y.dtype == torch.int64
        assert 0.0 <= float(s.x.min()) and float(s.x.max()) <= 1.0
    assert float(splits.train.x.max()) == 1.0


# -- splits -----------------------------------------------------------------------------------


def test_splits_deterministic_disjoint_sized():
    raw = load_dataset("synthetic", n=600, num_classes=4)
    a = make_splits(raw, train=300, calibration=100, test=120, seed=3)
    b = make_splits(raw, train=300, calibration=100, test=120, seed=3)
    assert (len(a.train), len(a.calibration), len(a.test)) == (300, 100, 120)
    assert a.hashes == b.hashes and torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    pools = [set(a.train.indices), set(a.calibration.indices), set(a.test.indices)]
    assert not (pools[0] & pools[1]) and not (pools[0] & pools[2]) and not (pools[1] & pools[2])
    c = make_splits(raw, train=300, calibration=100, test=120, seed=4)
    assert all(c.hashes[k] != a.hashes[k] for k in a.hashes)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 4
    rest = make_splits(raw, calibration=100, test=120, seed=3)  # train=None takes all that is left
    assert len(rest.train) == 600 - 100 - 120


def test_split_hashes_are_pinned(digits_splits):
    """Content hashes key the result cache: a change here silently invalidates every cached run.

    ``digits_splits`` (conftest) is train=1000, calibration=200, test=400, seed=0.
    """
    assert digits_splits.hashes == {
        "train": "4495ffbf0eb666e1825c0fc2949b1f445f5af6697c8b6986b3ad0d666acb4ea3",
        "calibration": "8de37641146c0c590630981716d4286f147ff61ef7dc05aea065159403e14d98",
        "test": "34739b478188765b07af5d4c4ec93d1cac2d0fb6859e02a1f3a2e1b38eab0710",
    }


def test_official_test_pool():
    rng = np.random.default_rng(0)
    raw = RawDataset(
        name="tiny",
        x_train=rng.integers(0, 256, (50, 1, 4, 4), dtype=np.uint8),
        y_train=np.arange(50) % 3,
        x_test=rng.integers(0, 256, (20, 1, 4, 4), dtype=np.uint8),
        y_test=np.arange(20) % 3,
        num_classes=3,
        class_names=("a", "b", "c"),
    )
    full = make_splits(raw, calibration=10, seed=0)
    assert (len(full.train), len(full.calibration), len(full.test)) == (40, 10, 20)
    assert torch.equal(full.test.x, torch.from_numpy(raw.x_test).float() / 255)
    part = make_splits(raw, train=5, calibration=10, test=7, seed=0)
    assert len(part.test) == 7 and len(set(part.test.indices)) == 7
    with pytest.raises(DataError, match="test=21 asked for"):
        make_splits(raw, calibration=10, test=21)
    with pytest.raises(DataError, match="need 61 examples"):
        make_splits(raw, train=51, calibration=10)
    with pytest.raises(DataError, match="non-negative"):
        make_splits(raw, calibration=-1)


def test_digits_native_and_28():
    d8 = load_dataset("digits")
    assert d8.x_train.shape == (1797, 1, 8, 8) and d8.max_value == 16 and d8.x_test is None
    d28 = load_dataset("digits", size=28)
    assert d28.x_train.shape == (1797, 1, 28, 28) and d28.x_train.dtype == np.uint8 and d28.max_value == 255
    assert d28.name == "digits28" and np.array_equal(d28.y_train, d8.y_train)
    s = make_splits(d28, train=500, calibration=100, test=200, seed=0)
    assert s.input_shape == (1, 28, 28) and 0.0 <= float(s.test.x.min()) and float(s.test.x.max()) <= 1.0
    with pytest.raises(DataError, match="positive integer"):
        load_dataset("digits", size=0)


def test_synthetic_rejects_bad_parameters():
    with pytest.raises(DataError, match="too small"):
        load_dataset("synthetic", n=5, num_classes=4)
    with pytest.raises(DataError, match="at least 2"):
        load_dataset("synthetic", num_classes=0)
    with pytest.raises(DataError, match="channels, height, width"):
        load_dataset("synthetic", shape=(8, 8))
    raw = load_dataset("synthetic", n=40, num_classes=4, shape=[1, 8, 8], seed=1)  # a YAML list works
    assert raw.x_train.shape == (40, 1, 8, 8)


def test_digits_read_without_sklearn_import_equal_load_digits():
    from sklearn.datasets import load_digits

    from advbench.data.builtin import _sklearn_digits

    images, target = _sklearn_digits()
    d = load_digits()
    assert np.array_equal(images, d.images) and np.array_equal(target, d.target)


def test_the_suites_download_setting_reaches_the_loader(isolated, monkeypatch, tmp_path):
    """`dataset.download: false` is passed to loaders that take it (a missing file is then an error, no fetch)."""
    from advbench.config import Suite
    from advbench.suite import context

    seen: list[dict] = []
    real = context.load_dataset

    def spy(name, **kw):
        seen.append(kw)
        return real(name, **kw)

    monkeypatch.setattr(context, "load_dataset", spy)
    for download in (False, True):
        suite = Suite.model_validate(
            {
                "name": "dl",
                "dataset": {"name": "digits", "download": download, "splits": {"train": 200, "test": 50}},
                "models": [{"name": "m", "architecture": "cnn-digits", "recipe": {"epochs": 1}}],
            }
        )
        context.CellContext.create(suite, context.RunOptions(cache_dir=str(tmp_path / "cache")))
        assert seen[-1]["download"] is download
    monkeypatch.setattr(B, "FASHION_MNIST_URL", "http://127.0.0.1:9/")  # never reached
    with pytest.raises(DataError, match="downloads are disabled"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "nothing-here", download=False)
