"""advbench's built-in datasets: fashion-mnist, mnist, digits, synthetic and shift (corrupted test images).

Registered through the ``advbench.datasets`` entry-point group like any plugin.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from advbench.data.base import RawDataset, dataset_shape, dataset_sizes, load_dataset, register_dataset
from advbench.data.idx import download, read_idx, user_cache_dir
from advbench.data.shift import make_shift_set
from advbench.errors import DataError
from advbench.hashing import sha256_file

log = logging.getLogger(__name__)

IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
#: SHA-256 of the official files (identical bytes to Debian's dataset-fashion-mnist package).
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}


def _has_all(folder: Path) -> bool:
    return all((folder / f).is_file() for f in IDX_FILES)


def find_idx_dir(
    name: str,
    *,
    data_dir: str | Path | None,
    system_dir: Path | None,
    url: str,
    sha256: dict[str, str],
    download_ok: bool = True,
    apt_package: str | None = None,
) -> Path:
    """The folder holding the four IDX files of ``name``.

    Looks in: ``data_dir``, ``$ADVBENCH_DATA`` (and its ``name`` sub-folder), ``system_dir`` (a
    Debian package's location), the user cache; else downloads into the user cache.
    """
    candidates: list[Path] = []
    if data_dir is not None:
        candidates += [Path(data_dir), Path(data_dir) / name]
    env = os.environ.get("ADVBENCH_DATA")
    if env:
        candidates += [Path(env), Path(env) / name]
    if system_dir is not None:
        candidates.append(system_dir)
    cache = download_cache_dir(name)
    candidates.append(cache)
    for c in candidates:
        if _has_all(c):
            log.debug("%s: using files in %s", name, c)
            return c
    if not download_ok:
        raise DataError(_missing_message(name, candidates, apt_package, "downloads are disabled"))
    try:
        for f in IDX_FILES:
            if not (cache / f).is_file():
                download(url + f, cache / f, sha256[f])
    except DataError as exc:
        raise DataError(_missing_message(name, candidates, apt_package, str(exc))) from exc
    return cache


def _missing_message(name: str, looked: list[Path], apt_package: str | None, why: str) -> str:
    apt = f"install the Debian package ({'apt-get install ' + apt_package}), " if apt_package else ""
    return (
        f"{name}: the files {', '.join(IDX_FILES)} were not found in any of "
        f"{', '.join(str(p) for p in looked)}, and fetching them failed ({why}). To fix: {apt}"
        f"put the four files in a folder and set $ADVBENCH_DATA or dataset.data_dir to it, "
        f"or run once with network access to download them."
    )


def download_cache_dir(name: str) -> Path:
    """Where advbench downloads the IDX files of ``name`` (``~/.cache/advbench/datasets/<name>``)."""
    return user_cache_dir() / "datasets" / name


def read_idx_dataset(
    name: str, folder: Path, classes: tuple[str, ...], *, url: str | None = None, sha256: dict[str, str] | None = None
) -> RawDataset:
    """Read the four IDX files in ``folder``.

    A file that is corrupt (it fails to decompress or its header does not match its size) raises
    :class:`DataError` naming it, unless ``folder`` is advbench's own download cache and ``url`` and
    ``sha256`` are given: then every file whose SHA-256 is wrong is deleted and downloaded again.
    """
    try:
        return _read_idx_folder(name, folder, classes)
    except DataError as exc:
        if url is None or sha256 is None or folder.resolve() != download_cache_dir(name).resolve():
            raise
        bad = [f for f in IDX_FILES if sha256_file(folder / f) != sha256[f]]
        if not bad:
            raise
        log.warning("%s: corrupt file(s) %s in the download cache (%s); downloading them again", name, bad, exc)
        try:
            for f in bad:
                (folder / f).unlink(missing_ok=True)
                download(url + f, folder / f, sha256[f])
        except DataError as again:
            raise DataError(
                f"{name}: {', '.join(str(folder / f) for f in bad)} in the download cache was corrupt ({exc}) and "
                f"downloading it again failed ({again}); run again with network access, or put good copies of "
                f"the files in a folder and set $ADVBENCH_DATA or dataset.data_dir to it"
            ) from again
        return _read_idx_folder(name, folder, classes)


def _read_idx_folder(name: str, folder: Path, classes: tuple[str, ...]) -> RawDataset:
    # zlib releases the GIL: the four files decompress side by side
    with ThreadPoolExecutor(max_workers=2) as pool:
        x_train, y_train, x_test, y_test = pool.map(read_idx, [folder / f for f in IDX_FILES])
    for xs, ys, split in ((x_train, y_train, "train"), (x_test, y_test, "t10k")):
        if xs.ndim != 3 or ys.ndim != 1 or len(xs) != len(ys) or xs.shape[1:] != x_train.shape[1:]:
            raise DataError(
                f"{folder}: {split} images {xs.shape} and labels {ys.shape} do not match "
                f"(expected (N, H, W) and (N,), the same H, W for train and t10k); replace the files"
            )
        if ys.size and int(ys.max()) >= len(classes):
            raise DataError(
                f"{folder}: {split} labels go up to {int(ys.max())}, expected < {len(classes)} for {name}; "
                f"the labels file is not {name}'s: replace it with the right one"
            )
    return RawDataset(
        name=name,
        x_train=x_train[:, None],
        y_train=y_train.astype(np.int64),
        x_test=x_test[:, None],
        y_test=y_test.astype(np.int64),
        num_classes=len(classes),
        class_names=classes,
        max_value=255,
        origin=str(folder),
    )


def _idx_lookup(name: str, system_dir: Path | None = None) -> str:
    """Where the IDX files of ``name`` are looked for (``advbench list datasets``)."""
    env = os.environ.get("ADVBENCH_DATA")
    system = f"{system_dir}, " if system_dir is not None else ""
    envs = f"$ADVBENCH_DATA={env}[/{name}], " if env else f"$ADVBENCH_DATA[/{name}], "
    return f"data_dir[/{name}], {envs}{system}{download_cache_dir(name)}"


@register_dataset(
    "fashion-mnist",
    sizes=(60000, 10000),
    lookup=lambda: _idx_lookup("fashion-mnist", FASHION_MNIST_DEBIAN),
    files=IDX_FILES,
    shape=(1, 28, 28),
)
def fashion_mnist(*, data_dir: str | Path | None = None, download: bool = True) -> RawDataset:
    """Zalando's Fashion-MNIST: 60,000 + 10,000 grey 28x28 images of 10 clothing classes."""
    folder = find_idx_dir(
        "fashion-mnist",
        data_dir=data_dir,
        system_dir=FASHION_MNIST_DEBIAN,
        url=FASHION_MNIST_URL,
        sha256=FASHION_MNIST_SHA256,
        download_ok=download,
        apt_package="dataset-fashion-mnist",
    )
    return read_idx_dataset(
        "fashion-mnist", folder, FASHION_MNIST_CLASSES, url=FASHION_MNIST_URL, sha256=FASHION_MNIST_SHA256
    )


@register_dataset(
    "mnist", sizes=(60000, 10000), shape=(1, 28, 28), lookup=lambda: _idx_lookup("mnist"), files=IDX_FILES
)
def mnist(*, data_dir: str | Path | None = None, download: bool = True) -> RawDataset:
    """LeCun's MNIST handwritten digits (28x28), from the user's files or a verified download."""
    folder = find_idx_dir(
        "mnist", data_dir=data_dir, system_dir=None, url=MNIST_URL, sha256=MNIST_SHA256, download_ok=download
    )
    return read_idx_dataset("mnist", folder, tuple(str(i) for i in range(10)), url=MNIST_URL, sha256=MNIST_SHA256)


@register_dataset("digits", sizes=(1797, None), shape=lambda p: (1, p.get("size", 8), p.get("size", 8)))
def digits(*, size: int = 8) -> RawDataset:
    """scikit-learn's embedded 8x8 handwritten digits (1,797 images, no download).

    ``size=28`` resizes them (bilinear) to 28x28, e.g. as out-of-distribution inputs for
    Fashion-MNIST models.
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise DataError(f"digits: size={size!r}; expected a positive integer (8 = native, 28 = MNIST-sized)")
    images, target = _sklearn_digits()
    x = images.astype(np.float32)[:, None]  # values 0..16
    max_value = 16
    if size != 8:
        import torch
        import torch.nn.functional as F

        t = F.interpolate(torch.from_numpy(x / 16.0), size=(size, size), mode="bilinear", align_corners=False)
        x = np.clip(np.rint(t.numpy() * 255.0), 0, 255)
        max_value = 255
    return RawDataset(
        name="digits" if size == 8 else f"digits{size}",
        x_train=x.astype(np.uint8),
        y_train=target.astype(np.int64),
        x_test=None,
        y_test=None,
        num_classes=10,
        class_names=tuple(str(i) for i in range(10)),
        max_value=max_value,
        origin="sklearn.datasets.load_digits",
    )


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """``load_digits()``'s images and targets, read from the CSV scikit-learn ships.

    ``import sklearn.datasets`` pulls in scipy.stats and costs ~2 s per process (a third of a
    cached re-run of quick.yaml); the file is found without importing sklearn and parsed the
    way ``load_digits`` parses it (the test suite checks they agree).
    """
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]) / "datasets" / "data" / "digits.csv.gz" if locations else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits  # an unusual install: let sklearn find its data

        d = load_digits()
        return d.images, d.target
    with gzip.open(path, "rt") as fh:
        data = np.loadtxt(fh, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


@register_dataset(
    "synthetic", sizes=lambda params: (params.get("n", 600), None), shape=lambda p: tuple(p.get("shape", (1, 8, 8)))
)
def synthetic(
    *, n: int = 600, num_classes: int = 4, shape: tuple[int, int, int] = (1, 8, 8), seed: int = 0
) -> RawDataset:
    """Small generated images: one random prototype per class plus noise (for unit tests)."""
    if num_classes < 2:
        raise DataError(f"synthetic: num_classes={num_classes}; expected at least 2")
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise DataError(f"synthetic: shape={tuple(shape)}; expected (channels, height, width), each >= 1")
    shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    if n < 2 * num_classes:
        raise DataError(f"synthetic: n={n} is too small for {num_classes} classes; use n >= {2 * num_classes}")
    rng = np.random.default_rng(seed)
    protos = rng.uniform(0, 255, size=(num_classes, *shape))
    y = np.arange(n) % num_classes
    rng.shuffle(y)
    x = np.clip(protos[y] + rng.normal(0, 40, size=(n, *shape)), 0, 255).astype(np.uint8)
    return RawDataset(
        name="synthetic",
        x_train=x,
        y_train=y.astype(np.int64),
        x_test=None,
        y_test=None,
        num_classes=num_classes,
        class_names=tuple(f"class{i}" for i in range(num_classes)),
        max_value=255,
        origin=f"generated(seed={seed})",
    )


def _shift_sizes(params: dict) -> tuple[int, None] | None:
    base = dataset_sizes(params.get("base", "fashion-mnist"), params.get("base_params"))
    if base is None:
        return None
    pool, test = base
    return (test if test is not None else pool), None


@register_dataset(
    "shift",
    sizes=_shift_sizes,
    shape=lambda p: dataset_shape(p.get("base", "fashion-mnist"), p.get("base_params")),
)
def shift(
    *,
    base: str = "fashion-mnist",
    corruption: str = "gaussian_noise",
    severity: int = 3,
    seed: int = 0,
    base_params: dict | None = None,
    data_dir: str | Path | None = None,
) -> RawDataset:
    """A corrupted copy (advbench.data.shift) of the registered dataset ``base``'s official test images.

    For a base without an official test split (digits, synthetic) the whole pool is corrupted, which
    includes the images a model was trained on: prefer :func:`advbench.data.shift.make_shift_set` on
    the run's held-out test split there. ``origin`` records the recipe and the set's sha256.
    """
    raw = load_dataset(base, data_dir=data_dir, **(base_params or {}))
    has_test = raw.x_test is not None and raw.y_test is not None
    x, y = (raw.x_test, raw.y_test) if has_test else (raw.x_train, raw.y_train)
    assert x is not None and y is not None
    src = x.astype(np.float64) / float(raw.max_value)
    shifted = make_shift_set(src, y, corruption, severity, seed=seed)
    return RawDataset(
        name=f"{raw.name}-{shifted.name}",
        x_train=shifted.x,
        y_train=shifted.y,
        x_test=None,
        y_test=None,
        num_classes=raw.num_classes,
        class_names=raw.class_names,
        max_value=255,
        origin=(
            f"{shifted.distance} shift {shifted.name} (seed {seed}) of {raw.name}'s "
            f"{'test' if has_test else 'whole pool of'} images; sha256 {shifted.sha256}"
        ),
    )


# SVHN and CIFAR-10 live in their own module; importing it registers them with the built-ins.
from advbench.data import colour as _colour  # noqa: E402,F401
