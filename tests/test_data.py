"""advbench.data: IDX reading, the lookup order, verified downloads from a loopback server, seeded splits,
corrupt IDX files, bad data, and dataset sizes known without loading.

Bad data is a DataError naming the dataset, the array and the fix, from load_dataset or make_splits. Kinds
tried: NaN pixels, infinite pixels, pixels above max_value, negative pixels, negative labels, labels >=
num_classes, non-integer (fractional) labels, NaN labels, string labels, images and labels of different
lengths, images that are not (N, C, H, W), a loader returning something else than a RawDataset, splits larger
than the dataset (single pool and official test set), and negative or non-integer split sizes. Each is refused
before any model sees the data. A truncated, a bit-flipped and a non-gzip IDX file in a data folder is a clear
error; in the download cache it is downloaded again.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from advbench.data import DATASETS, RawDataset, check_raw_dataset, dataset_sizes, load_dataset, make_splits
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


# -- corrupt IDX files in a data folder and in the download cache ---------------------------------------

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
def test_corrupt_idx_in_data_dir_is_a_clear_data_error(tmp_path, no_system_fashion, which, how, damage_file):
    folder = tmp_path / "data"
    _fake_fashion(folder)
    assert len(load_dataset("fashion-mnist", data_dir=folder).y_train) == 60
    if how == "not-gzip":
        (folder / which).write_bytes(b"<html>404 Not Found</html>")
    else:
        damage_file(folder / which, how)
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", data_dir=folder)
    message = str(info.value)
    assert str(folder / which) in message
    assert "corrupt" in message or "not an IDX file" in message
    assert "replace it with a good copy" in message


def test_corrupt_idx_in_download_cache_is_downloaded_again(
    tmp_path, no_system_fashion, monkeypatch, caplog, damage_file
):
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
    damage_file(cache / _IDX[0], "flip-middle")
    with caplog.at_level("WARNING"):
        raw = load_dataset("fashion-mnist")
    assert fetched == [_IDX[0]]  # only the bad file
    assert len(raw.y_train) == 60 and "downloading them again" in caplog.text
    assert (cache / _IDX[0]).read_bytes() == good[_IDX[0]]


def test_corrupt_idx_in_download_cache_offline_says_how_to_fix(tmp_path, no_system_fashion, monkeypatch, damage_file):
    builtin = no_system_fashion
    cache = tmp_path / "xdg" / "advbench" / "datasets" / "fashion-mnist"
    good = _fake_fashion(cache)
    monkeypatch.setattr(builtin, "FASHION_MNIST_SHA256", {n: hashlib.sha256(b).hexdigest() for n, b in good.items()})
    damage_file(cache / _IDX[2], "truncate")
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist")
    message = str(info.value)
    assert str(cache / _IDX[2]) in message and "downloading it again failed" in message
    assert "network access" in message and "$ADVBENCH_DATA" in message


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


# -- bad data ---------------------------------------------------------------------------------------


def _raw(n: int = 60, *, test: int | None = None, float_x: bool = False, num_classes: int = 3) -> RawDataset:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 1, 4, 4)).astype(np.float32 if float_x else np.uint8)
    y = np.arange(n) % num_classes
    xt = yt = None
    if test is not None:
        xt, yt = rng.integers(0, 256, (test, 1, 4, 4)).astype(np.uint8), np.arange(test) % num_classes
    return RawDataset("user-set", x, y, xt, yt, num_classes, tuple("abc"[:num_classes]))


def _with(raw: RawDataset, **changes: object) -> RawDataset:
    return replace(raw, **changes)


def _x(raw: RawDataset, value: float, at: tuple[int, ...] = (5, 0, 1, 2)) -> np.ndarray:
    x = raw.x_train.astype(np.float32)
    x[at] = value
    return x


def _y(raw: RawDataset, value: object, at: int = 7, dtype: object = None) -> np.ndarray:
    y = raw.y_train.astype(dtype or raw.y_train.dtype)
    y[at] = value
    return y


BAD: dict[str, tuple[Callable[[RawDataset], RawDataset], list[str]]] = {
    "nan-pixel": (lambda r: _with(r, x_train=_x(r, np.nan)), ["x_train holds 1 NaN or infinite", "example 5"]),
    "inf-pixel": (lambda r: _with(r, x_train=_x(r, np.inf)), ["x_train holds 1 NaN or infinite"]),
    "pixel-above-max": (lambda r: _with(r, x_train=_x(r, 300.0)), ["pixel values in [", "300]", "max_value=255"]),
    "negative-pixel": (lambda r: _with(r, x_train=_x(r, -1.0)), ["pixel values in [-1,", "rescale"]),
    "negative-label": (lambda r: _with(r, y_train=_y(r, -1)), ["y_train holds 1 label(s) outside 0..2", "min -1"]),
    "label-too-big": (lambda r: _with(r, y_train=_y(r, 3)), ["y_train holds 1 label(s) outside 0..2", "max 3"]),
    "fractional-label": (lambda r: _with(r, y_train=_y(r, 1.5, dtype=np.float64)), ["non-integer labels", "1.5"]),
    "nan-label": (lambda r: _with(r, y_train=_y(r, np.nan, dtype=np.float64)), ["non-integer labels", "nan"]),
    "string-labels": (
        lambda r: _with(r, y_train=np.array(["a", "b", "c"] * 20)),
        ["y_train has dtype <U1", "map class names to indices"],
    ),
    "length-mismatch": (lambda r: _with(r, y_train=r.y_train[:-1]), ["x_train has shape (60, 1, 4, 4)", "(59,)"]),
    "not-nchw": (lambda r: _with(r, x_train=r.x_train[:, 0]), ["expected (N, C, H, W) images"]),
    "test-label-too-big": (
        lambda r: _with(r, x_test=r.x_train[:10], y_test=np.full(10, 9)),
        ["y_test holds 10 label(s) outside 0..2"],
    ),
    "list-not-array": (lambda r: _with(r, y_train=list(r.y_train)), ["y_train a list", "numpy arrays"]),
    "one-class": (lambda r: _with(r, num_classes=1), ["num_classes=1; expected an integer >= 2"]),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_make_splits_refuses_bad_data(kind):
    damage, expected = BAD[kind]
    raw = damage(_raw())
    with pytest.raises(DataError) as info:
        make_splits(raw, train=30, calibration=10, test=10)
    message = str(info.value)
    assert message.startswith("user-set: "), message  # names the dataset
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
    assert "expected" in message and ("fix the loader of 'user-set'" in message or "repair" in message)


def test_float_images_in_range_are_fine():
    raw = _with(_raw(float_x=True), x_train=_raw(float_x=True).x_train / 255.0 * 16.0, max_value=16)
    splits = make_splits(raw, train=30, calibration=10, test=10)
    assert float(splits.train.x.max()) <= 1.0
    check_raw_dataset(_raw(test=20))


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        ({"train": 40, "calibration": 15, "test": 10}, "need 65 examples but the dataset has 60"),
        ({"train": None, "calibration": 50, "test": 20}, "need 70 examples but the dataset has 60"),
        ({"train": 61, "calibration": 0, "test": 1}, "need 62 examples"),
    ],
)
def test_splits_larger_than_the_dataset(sizes, expected):
    with pytest.raises(DataError, match=expected) as info:
        make_splits(_raw(), **sizes)
    assert "reduce dataset.splits" in str(info.value)


def test_splits_larger_than_the_official_sets():
    raw = _raw(n=50, test=20)
    with pytest.raises(DataError, match="test=21 asked for, but the official test set has 20 examples"):
        make_splits(raw, train=10, calibration=5, test=21)
    with pytest.raises(DataError, match="need 51 examples but the training pool has 50"):
        make_splits(raw, train=46, calibration=5, test=10)


@pytest.mark.parametrize("value", [-1, 2.5, "10", True])
@pytest.mark.parametrize("which", ["train", "calibration", "test"])
def test_bad_split_sizes(which, value):
    sizes: dict[str, object] = {"train": 20, "calibration": 5, "test": 5, which: value}
    with pytest.raises(DataError, match=rf"split size {which}={value!r}: expected a non-negative whole number"):
        make_splits(_raw(), **sizes)  # type: ignore[arg-type]


# -- through the registry, as a suite would load it (user_dataset: conftest) ----------------------


@pytest.mark.parametrize("kind", ["nan-pixel", "label-too-big", "fractional-label", "negative-label"])
def test_registered_dataset_with_bad_data_fails_on_load(user_dataset, kind):
    damage, expected = BAD[kind]
    name = user_dataset(lambda: damage(_raw()))
    with pytest.raises(DataError) as info:
        load_dataset(name)
    for part in expected:
        assert part in str(info.value)


def test_registered_dataset_returning_the_wrong_type(user_dataset):
    name = user_dataset(lambda: {"x": np.zeros((3, 1, 2, 2))})
    with pytest.raises(DataError, match=rf"dataset '{name}': the loader returned a dict; expected an advbench.data"):
        load_dataset(name)


def test_registered_dataset_too_small_for_the_splits(user_dataset):
    name = user_dataset(lambda: _raw(n=30))
    raw = load_dataset(name)
    with pytest.raises(DataError, match=r"need 40 examples but the dataset has 30; reduce dataset\.splits"):
        make_splits(raw, train=20, calibration=10, test=10)


def test_registrations_are_cleaned_up():
    assert not DATASETS.list("test-user-set-*")


# -- sizes without loading -------------------------------------------------------------------------


def test_dataset_sizes_are_known_without_loading(monkeypatch):
    import advbench.data.builtin as builtin

    def boom(*args, **kwargs):
        raise AssertionError("validation must not read or download dataset files")

    monkeypatch.setattr(builtin, "find_idx_dir", boom)
    assert dataset_sizes("fashion-mnist") == (60000, 10000)
    assert dataset_sizes("mnist") == (60000, 10000)
    assert dataset_sizes("digits", {"size": 28}) == (1797, None)
    assert dataset_sizes("synthetic", {"n": 123}) == (123, None)
    assert dataset_sizes("synthetic", {"n": "many"}) is None  # bad params are reported elsewhere
    assert dataset_sizes("no-such-dataset") is None
