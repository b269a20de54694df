"""The colour datasets of the paper: SVHN (cropped digits) and CIFAR-10, read without unpickling.

* **SVHN**: ``train_32x32.mat`` and ``test_32x32.mat`` (MATLAB v5 files) read with
  :func:`scipy.io.loadmat`, which parses the MAT format itself and never unpickles. ``X`` is
  (32, 32, 3, N) uint8 and ``y`` holds 1..10, where 10 means the digit 0.
* **CIFAR-10**: the *binary* version ``cifar-10-binary.tar.gz`` (``data_batch_1..5.bin`` and
  ``test_batch.bin``, records of 1 label byte and 3,072 pixel bytes, channel-major), parsed with
  numpy from the tar members. The python version (pickles) is never read.

Each is looked for, in order, in ``data_dir`` (a suite's ``dataset.data_dir``) and its ``<name>``
sub-folder, ``$ADVBENCH_DATA`` and its ``<name>`` sub-folder, and advbench's download cache
(``~/.cache/advbench/datasets/<name>``); else it is downloaded from the official URL into the cache
and verified by SHA-256 before it is renamed into place.

Checksums: the SHA-256 values are those TensorFlow Datasets pins for the same official URLs
(``tensorflow_datasets/url_checksums/{cifar10,svhn_cropped}.txt``); the authors publish only MD5s
(CIFAR-10 binary ``c32a1d4ab5d03f1284b67883e8d87530``; torchvision lists SVHN train
``e26dedcc434d2e4c54c9b2d4a06d8373`` and test ``eb5a983be6a315427106f1b4d7f8b2f7``), which are kept
here for reference and checked too after a download.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
from pathlib import Path

import numpy as np

from advbench.data.base import RawDataset, register_dataset
from advbench.data.idx import download, user_cache_dir
from advbench.errors import DataError
from advbench.hashing import sha256_file

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_FILES",
    "CIFAR10_URL",
    "SVHN_FILES",
    "SVHN_URL",
    "candidate_dirs",
    "cifar10",
    "read_cifar10_binary",
    "read_svhn_mat",
    "svhn",
]

log = logging.getLogger(__name__)

SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
#: file -> (sha256, md5, size in bytes) of the official cropped-digits files
SVHN_FILES: dict[str, tuple[str, str, int]] = {
    "train_32x32.mat": (
        "435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8",
        "e26dedcc434d2e4c54c9b2d4a06d8373",
        182040794,
    ),
    "test_32x32.mat": (
        "cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b",
        "eb5a983be6a315427106f1b4d7f8b2f7",
        64275384,
    ),
}

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/"
CIFAR10_FILES: dict[str, tuple[str, str, int]] = {
    "cifar-10-binary.tar.gz": (
        "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
        "c32a1d4ab5d03f1284b67883e8d87530",
        170052171,
    ),
}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST = "test_batch.bin"
_RECORD = 1 + 3 * 32 * 32


def candidate_dirs(name: str, data_dir: str | Path | None) -> list[Path]:
    """The folders searched for ``name``'s files, in order (the last is the download cache)."""
    out: list[Path] = []
    if data_dir is not None:
        out += [Path(data_dir), Path(data_dir) / name]
    env = os.environ.get("ADVBENCH_DATA")
    if env:
        out += [Path(env), Path(env) / name]
    out.append(user_cache_dir() / "datasets" / name)
    return out


def lookup_description(name: str) -> str:
    """Where ``name``'s files are looked for, for ``advbench list datasets``."""
    env = os.environ.get("ADVBENCH_DATA")
    cache = user_cache_dir() / "datasets" / name
    envs = f"$ADVBENCH_DATA={env}[/{name}], " if env else f"$ADVBENCH_DATA[/{name}], "
    return f"data_dir[/{name}], {envs}{cache}"


def _find_or_download(
    name: str, files: dict[str, tuple[str, str, int]], url: str, data_dir: str | Path | None, download_ok: bool
) -> Path:
    looked = candidate_dirs(name, data_dir)
    for folder in looked:
        if all((folder / f).is_file() for f in files):
            log.debug("%s: using files in %s", name, folder)
            return folder
    cache = looked[-1]
    why = "downloads are disabled"
    if download_ok:
        try:
            for f, (sha, md5, _) in files.items():
                if not (cache / f).is_file():
                    download(url + f, cache / f, sha)
                    _check_md5(cache / f, md5)
            return cache
        except DataError as exc:
            why = str(exc)
    raise DataError(
        f"{name}: the files {', '.join(files)} were not found in any of {', '.join(str(p) for p in looked)}, "
        f"and fetching them failed ({why}). To fix: download {', '.join(url + f for f in files)} into a folder "
        f"and set $ADVBENCH_DATA or dataset.data_dir to it, or run once with network access."
    )


def _check_md5(path: Path, md5: str) -> None:
    h = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    if h.hexdigest() != md5:
        path.unlink(missing_ok=True)
        raise DataError(
            f"{path}: md5 {h.hexdigest()} differs from the authors' published {md5} although the sha256 matched; "
            f"the file was deleted"
        )


def _verified_cache_retry(
    name: str, folder: Path, files: dict[str, tuple[str, str, int]], url: str, exc: DataError
) -> bool:
    """A corrupt file in advbench's own cache whose SHA-256 is wrong is deleted and downloaded again."""
    if folder.resolve() != (user_cache_dir() / "datasets" / name).resolve():
        return False
    bad = [f for f, (sha, _, _) in files.items() if sha256_file(folder / f) != sha]
    if not bad:
        return False
    log.warning("%s: corrupt file(s) %s in the download cache (%s); downloading them again", name, bad, exc)
    for f in bad:
        (folder / f).unlink(missing_ok=True)
        download(url + f, folder / f, files[f][0])
    return True


# -- SVHN -------------------------------------------------------------------------------------------


def read_svhn_mat(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels 0..9 (int64) of one SVHN cropped-digits ``.mat`` file."""
    import scipy.io

    path = Path(path)
    fix = "replace it with the official file (delete it if it is in the advbench cache: it is downloaded again)"
    try:
        mat = scipy.io.loadmat(str(path), variable_names=["X", "y"])
    except Exception as exc:  # scipy raises ValueError, TypeError, OSError, zlib errors on a broken file
        raise DataError(
            f"{path}: not a readable MATLAB file ({type(exc).__name__}: {exc}); it is truncated or corrupt: {fix}"
        ) from exc
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{path}: expected variables 'X' and 'y', found {sorted(k for k in mat if k[:2] != '__')}")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.shape[0]:
        raise DataError(
            f"{path}: X has shape {x.shape} and y {y.shape}; expected X (32, 32, 3, N) and y (N, 1) as in the "
            f"official cropped-digits files: {fix}"
        )
    if x.dtype != np.uint8:
        raise DataError(f"{path}: X has dtype {x.dtype}, expected uint8 pixels: {fix}")
    if y.size and (not np.all(np.isin(y, np.arange(1, 11)))):
        raise DataError(
            f"{path}: labels outside 1..10 (10 = digit 0) found, e.g. {y[~np.isin(y, np.arange(1, 11))][:3]}"
        )
    labels = y.astype(np.int64) % 10  # 10 -> 0
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), labels


@register_dataset(
    "svhn", sizes=(73257, 26032), shape=(3, 32, 32), lookup=lambda: lookup_description("svhn"), files=tuple(SVHN_FILES)
)
def svhn(*, data_dir: str | Path | None = None, download: bool = True) -> RawDataset:
    """SVHN cropped digits (Netzer et al. 2011): 73,257 + 26,032 colour 32x32 house-number digits."""
    folder = _find_or_download("svhn", SVHN_FILES, SVHN_URL, data_dir, download)
    try:
        (xtr, ytr), (xte, yte) = (read_svhn_mat(folder / f) for f in SVHN_FILES)
    except DataError as exc:
        if not _verified_cache_retry("svhn", folder, SVHN_FILES, SVHN_URL, exc):
            raise
        (xtr, ytr), (xte, yte) = (read_svhn_mat(folder / f) for f in SVHN_FILES)
    return RawDataset(
        name="svhn",
        x_train=xtr,
        y_train=ytr,
        x_test=xte,
        y_test=yte,
        num_classes=10,
        class_names=tuple(str(i) for i in range(10)),
        max_value=255,
        origin=str(folder),
    )


# -- CIFAR-10 ---------------------------------------------------------------------------------------


def _parse_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    if len(raw) == 0 or len(raw) % _RECORD:
        raise DataError(
            f"{where}: {len(raw)} bytes is not a whole number of {_RECORD}-byte records (1 label byte + 3072 "
            f"pixel bytes); the file is truncated or not CIFAR-10's binary version"
        )
    rec = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _RECORD)
    labels = rec[:, 0].astype(np.int64)
    if labels.max() >= 10:
        raise DataError(f"{where}: label {int(labels.max())} found, expected 0..9; not CIFAR-10's binary version")
    return rec[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def read_cifar10_binary(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """``(x_train, y_train, x_test, y_test, class names)`` from ``cifar-10-binary.tar.gz`` or its extracted folder.

    ``path`` is the tarball or a folder holding ``data_batch_{1..5}.bin`` and ``test_batch.bin``.
    """
    path = Path(path)
    members = (*CIFAR10_TRAIN, CIFAR10_TEST)
    blobs: dict[str, bytes] = {}
    meta: bytes | None = None
    fix = "replace it with the official file (delete it if it is in the advbench cache: it is downloaded again)"
    if path.is_dir():
        for m in members:
            if not (path / m).is_file():
                raise DataError(f"{path}: {m} is missing; expected the extracted cifar-10-batches-bin folder")
            blobs[m] = (path / m).read_bytes()
        if (path / "batches.meta.txt").is_file():
            meta = (path / "batches.meta.txt").read_bytes()
    else:
        try:
            with tarfile.open(path, mode="r:gz") as tar:
                for info in tar:
                    base = info.name.rsplit("/", 1)[-1]
                    if not info.isfile() or base not in (*members, "batches.meta.txt"):
                        continue
                    fh = tar.extractfile(info)
                    assert fh is not None
                    data = fh.read()
                    if base == "batches.meta.txt":
                        meta = data
                    else:
                        blobs[base] = data
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DataError(
                f"{path}: not a readable .tar.gz ({type(exc).__name__}: {exc}); it is truncated or corrupt: {fix}"
            ) from exc
        missing = [m for m in members if m not in blobs]
        if missing:
            raise DataError(f"{path}: the archive lacks {missing}; expected CIFAR-10's binary version: {fix}")
    train = [_parse_batch(blobs[m], f"{path}:{m}") for m in CIFAR10_TRAIN]
    x_test, y_test = _parse_batch(blobs[CIFAR10_TEST], f"{path}:{CIFAR10_TEST}")
    names: tuple[str, ...] = CIFAR10_CLASSES
    if meta is not None:
        found = tuple(s.strip() for s in meta.decode("ascii", "replace").splitlines() if s.strip())
        if len(found) == 10:
            names = found
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return x_train, y_train, x_test, y_test, names


def _find_cifar(data_dir: str | Path | None, download_ok: bool) -> Path:
    """An extracted ``cifar-10-batches-bin`` folder in a searched folder, else the tarball (downloaded if need be)."""
    for folder in candidate_dirs("cifar10", data_dir):
        ext = folder / "cifar-10-batches-bin"
        if all((ext / m).is_file() for m in (*CIFAR10_TRAIN, CIFAR10_TEST)):
            return ext
        if (folder / "cifar-10-binary.tar.gz").is_file():
            return folder / "cifar-10-binary.tar.gz"
    return _find_or_download("cifar10", CIFAR10_FILES, CIFAR10_URL, data_dir, download_ok) / "cifar-10-binary.tar.gz"


@register_dataset(
    "cifar10",
    sizes=(50000, 10000),
    shape=(3, 32, 32),
    lookup=lambda: lookup_description("cifar10"),
    files=("cifar-10-binary.tar.gz", "or cifar-10-batches-bin/"),
)
def cifar10(*, data_dir: str | Path | None = None, download: bool = True) -> RawDataset:
    """CIFAR-10 (Krizhevsky 2009): 50,000 + 10,000 colour 32x32 images of 10 classes, from the binary version."""
    path = _find_cifar(data_dir, download)
    try:
        x_train, y_train, x_test, y_test, names = read_cifar10_binary(path)
    except DataError as exc:
        if path.is_dir() or not _verified_cache_retry("cifar10", path.parent, CIFAR10_FILES, CIFAR10_URL, exc):
            raise
        x_train, y_train, x_test, y_test, names = read_cifar10_binary(path)
    return RawDataset(
        name="cifar10",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=10,
        class_names=names,
        max_value=255,
        origin=str(path),
    )
