"""Reading IDX files (the MNIST family's format) and fetching them with SHA-256 verification.

Hand-written because no maintained library reads IDX without pulling in torchvision (which would
replace this machine's CPU torch); the format is four header fields and a raw array.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from advbench.errors import DataError

__all__ = ["read_idx", "download", "sha256_file", "user_cache_dir"]

log = logging.getLogger(__name__)

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/advbench`` (default ``~/.cache/advbench``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "advbench"


def read_idx(path: str | Path) -> np.ndarray:
    """Read a (possibly gzipped) IDX file into a numpy array, checking its header against its size."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read this IDX file ({exc}); delete it so it is fetched again") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()!r}); delete it and fetch it again")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header; delete the file and fetch it again")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: the header announces shape {shape} ({expected} bytes) but the file holds "
            f"{len(raw) - header} bytes: the file is truncated or corrupt; delete it and fetch it again"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: str | Path, sha256: str, *, timeout: float = 60.0, progress: bool = True) -> Path:
    """Download ``url`` to ``dest``, verifying its SHA-256.

    The bytes go to a temporary file in the destination folder and are renamed into place only
    once verified, so ``dest`` is never half-written.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (http(s) URLs we own)
                    total = int(resp.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                        while block := resp.read(1 << 16):
                            out.write(block)
                            h.update(block)
                            bar.update(len(block))
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                raise DataError(f"could not download {url}: {exc}") from exc
            out.flush()
            os.fsync(out.fileno())
        got = h.hexdigest()
        if got != sha256:
            raise DataError(
                f"checksum mismatch for {url}: expected sha256 {sha256}, got {got}; the download is discarded "
                f"(a proxy or a changed file upstream?). Nothing was written to {dest}"
            )
        os.replace(tmp, dest)
        log.info("downloaded %s -> %s", url, dest)
        return dest
    finally:
        tmp.unlink(missing_ok=True)
