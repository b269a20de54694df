"""Reading IDX files (the MNIST family's format) and fetching them with SHA-256 verification.

Hand-written because no maintained library reads IDX without pulling in torchvision (which would
replace this machine's CPU torch); the format is four header fields and a raw array.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from advbench.errors import DataError
from advbench.hashing import sha256_file

__all__ = ["download", "read_idx", "sha256_file", "user_cache_dir"]

log = logging.getLogger(__name__)

_FIX = (
    "replace it with a good copy (delete it if it is in the advbench cache and it is downloaded again; "
    "reinstall the Debian package if it came from one)"
)

_DTYPES: dict[int, Any] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/advbench`` (default ``~/.cache/advbench``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "advbench"


def read_idx(path: str | Path) -> np.ndarray:
    """Read a (possibly gzipped) IDX file into a numpy array, checking its header against its size."""
    path = Path(path)
    fix = _FIX
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read this IDX file ({exc}); check its permissions or {fix}") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            # one zlib call (wbits=31: gzip framing) instead of gzip.decompress's member loop; a bad
            # CRC or length raises, and a truncated stream or trailing junk is caught below.
            d = zlib.decompressobj(wbits=31)
            out = d.decompress(raw)
            if not d.eof or d.unused_data:
                raise zlib.error("the gzip stream is truncated" if not d.eof else "junk after the gzip stream")
            raw = out
        except zlib.error as exc:
            raise DataError(f"{path}: not a valid gzip file ({exc}); the file is corrupt: {fix}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(
            f"{path}: not an IDX file (magic number {raw[:4].hex()!r}, expected 0x0000 then a type code "
            f"and the number of dimensions): {fix}"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: the IDX header is truncated ({len(raw)} bytes): {fix}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: the header announces shape {shape} ({expected} bytes) but the file holds "
            f"{len(raw) - header} bytes: the file is truncated or corrupt: {fix}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


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
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
                if isinstance(exc, urllib.error.HTTPError):
                    exc.close()  # an HTTP error holds the response (and its socket) open
                raise DataError(f"could not download {url}: {type(exc).__name__}: {exc}") from exc
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
