"""The numeric code path of this process: which kernels compute a cell's floats. Recorded, and keyed.

The same code, data, seed and thread count give other bits on another CPU: seed 0 of the committed
suite, computed on a second machine under the very same keys, gives other weights for every model and
other values for 283 of its 324 transfer metrics. Each library picks its kernels from the machine it finds:

* torch dispatches its vectorised kernels by instruction set (``torch.backends.cpu.get_cpu_capability()``);
* oneDNN (convolutions) compiles for the best ISA it finds and blocks its loops by the CPU's caches;
* MKL (matrix products) picks a code branch per CPU, unless its conditional numerical reproducibility
  (``MKL_CBWR``) fixes one;
* numpy dispatches its SIMD loops by CPU feature; faiss its distance kernels by SIMD level, and its BLAS
  (OpenBLAS) by core type;
* on a GPU: the device, CUDA, cuDNN and the TF32 and determinism switches.

Each path is deterministic on its own. advbench **keys** the path instead of pinning one: the part of
:func:`numeric_path` a cell uses is in its cache key (:class:`advbench.suite.plan.CellCode`), so cells
computed on different paths are recomputed, never mixed, and a Ray worker on another path refuses the
driver's cells (:func:`check_worker_path`). The manifest records :func:`path_record`: the keyed path
and what explains it (the CPU's name, flags and caches, the environment variables that move a path).
Why not a portable pinned path: an instruction-set cap alone does not reproduce another CPU's bits
(forcing AVX2 on an AVX-512 machine gives a third set of models, neither machine's), oneDNN's blocking
follows the caches, and a pin can only be shown portable on two kinds of CPU; the native path is also
the fast one. So the key includes the CPU's identity (vendor, family, model, cache sizes) as well.

Reading what oneDNN chose has no API in torch: its verbose mode prints it, and :func:`_capture_stdout`
reads that once per process (written by hand: no library exposes it).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "PATH_VARIABLES",
    "check_worker_path",
    "cpu",
    "describe",
    "numeric_path",
    "path_differences",
    "path_record",
]

#: The environment variables that move a library's code path (recorded in the manifest; their effect is keyed
#: through what the libraries then report).
PATH_VARIABLES = (
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "ONEDNN_DEFAULT_FPMATH_MODE",
    "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_DEBUG_CPU_TYPE",
    "NPY_DISABLE_CPU_FEATURES",
    "NPY_ENABLE_CPU_FEATURES",
    "FAISS_OPT_LEVEL",
    "OPENBLAS_CORETYPE",
    "CUBLAS_WORKSPACE_CONFIG",
    "NVIDIA_TF32_OVERRIDE",
)
#: The CPU flags the manifest lists (the vector and matrix extensions the libraries above dispatch on).
CPU_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512dq",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


@functools.cache
def cpu() -> dict[str, Any]:
    """This machine's CPU: vendor, family, model, stepping, name, vector flags and cache sizes (Linux
    ``/proc/cpuinfo`` and ``/sys``; elsewhere what :mod:`platform` says)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        first = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split("\n\n", 1)[0]
        for line in first.splitlines():
            k, _, v = line.partition(":")
            fields.setdefault(k.strip(), v.strip())
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return {
        "machine": platform.machine(),
        "vendor": fields.get("vendor_id") or fields.get("CPU implementer") or platform.processor() or "unknown",
        "family": fields.get("cpu family") or fields.get("CPU architecture"),
        "model": fields.get("model") or fields.get("CPU part"),
        "stepping": fields.get("stepping") or fields.get("CPU revision"),
        "name": fields.get("model name") or platform.processor() or platform.machine(),
        "flags": [f for f in CPU_FLAGS if f in flags],
        "caches": _caches(),
    }


def _caches() -> dict[str, str]:
    """Cache sizes of CPU 0 by level and type (``{"L1d": "48K", "L2": "1024K", ...}``), from Linux's sysfs."""
    out: dict[str, str] = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        with contextlib.suppress(OSError):
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
            out[f"L{level}{suffix}"] = (index / "size").read_text().strip()
    return out


def _cpu_key(c: Mapping[str, Any]) -> str:
    """The CPU part of the key: the micro-architecture and the caches its kernels block by."""
    caches = ",".join(f"{k}={v}" for k, v in sorted(c["caches"].items()) if not k.endswith("i"))
    return f"{c['machine']} {c['vendor']} family {c['family']} model {c['model']} [{caches}]"


@contextlib.contextmanager
def _capture_stdout() -> Iterator[Callable[[], str]]:
    """What C code writes to file descriptor 1 inside the block (the verbose modes of oneDNN and MKL)."""
    sys.stdout.flush()
    saved = os.dup(1)
    text = ""
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 1)
        try:
            yield lambda: text
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", errors="replace")


def _onednn_isa() -> str:
    """The instruction set oneDNN compiles for, as its verbose header names it (or the convolution it ran)."""
    import torch

    with _capture_stdout() as out, torch.no_grad(), torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        torch.nn.functional.conv2d(torch.zeros(4, 16, 12, 12), torch.zeros(16, 16, 3, 3))
    text = out()
    if m := re.search(r"info,cpu,isa:([^\n]+)", text):
        return m.group(1).strip()
    if m := re.search(r"exec,cpu,convolution,([^,]+)", text):  # the header was printed earlier in this process
        return f"convolution {m.group(1)}"
    return "unknown"


def _mkl_branch() -> str:
    """MKL's build and what fixes its code branch: ``MKL_CBWR`` (conditional numerical reproducibility) and
    ``MKL_ENABLE_INSTRUCTIONS``; without them MKL picks its branch from the CPU, which the key names apart.

    MKL's verbose mode would name the branch, but it times the CPU's clock first (about 1 s per process on
    the reference machine, too slow for every worker and every ``--plan``), and on an AMD CPU it names no
    branch anyway.
    """
    import torch

    build = re.search(r"Math Kernel Library Version (\S+)", torch.__config__.show())
    cbwr, isa = (os.environ.get(k, "unset") for k in ("MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS"))
    return f"{build.group(1) if build else 'unknown'}; CBWR {cbwr}; instructions {isa}"


@functools.cache
def _torch_path() -> dict[str, str]:
    import torch

    path = {"version": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability()}
    if torch.backends.mkldnn.is_available():
        path["onednn"] = _onednn_isa()
    if torch.backends.mkl.is_available():
        path["mkl"] = _mkl_branch()
    return path


@functools.cache
def _numpy_path() -> dict[str, Any]:
    import numpy as np

    try:
        from numpy._core import _multiarray_umath as umath  # type: ignore[attr-defined]
    except ImportError:  # numpy < 2
        from numpy.core import _multiarray_umath as umath  # type: ignore[no-redef]
    found = umath.__cpu_features__
    return {
        "version": np.__version__,
        "dispatch": [t for t in umath.__cpu_dispatch__ if found.get(t)],
    }


def _openblas_core() -> str | None:
    """The core type of the OpenBLAS this process has loaded (faiss's BLAS), or None."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/maps").read_text().splitlines():
            lib = line.split()[-1]
            if "libopenblas" in lib:
                fn = ctypes.CDLL(lib).openblas_get_corename
                fn.restype = ctypes.c_char_p
                return str(fn().decode())
    return None


@functools.cache
def _faiss_path() -> dict[str, Any]:
    import faiss

    config = getattr(faiss, "SIMDConfig", None)
    level = config.get_level_name() if config is not None else (faiss.get_compile_options() or "unknown")
    return {"version": faiss.__version__, "simd": level, "blas": _openblas_core()}


def _cuda_path(device: str) -> dict[str, Any]:
    import torch

    props = torch.cuda.get_device_properties(torch.device(device))
    return {
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def numeric_path(device: str = "cpu", libraries: Iterable[str] = ("torch", "numpy")) -> dict[str, Any]:
    """The keyed numeric path of a cell that runs on ``device`` and uses ``libraries`` (distribution names).

    The CPU and torch's CPU path always (every cell computes on the host too); numpy's and faiss's where the
    cell uses them; the GPU's where ``device`` is one.
    """
    libs = set(libraries)
    path: dict[str, Any] = {"device": str(device), "cpu": _cpu_key(cpu()), "torch": _torch_path()}
    if "numpy" in libs:
        path["numpy"] = _numpy_path()
    if libs & {"faiss-cpu", "faiss-gpu", "faiss"}:
        path["faiss"] = _faiss_path()
    if str(device).startswith("cuda"):
        path["cuda"] = _cuda_path(str(device))
    return path


def path_record(keyed: Mapping[str, Any]) -> dict[str, Any]:
    """What the manifest records: the ``keyed`` path (of every library a run uses), the CPU and the environment."""
    return {
        "keyed": dict(keyed),
        "cpu": cpu(),
        "environment": {k: os.environ[k] for k in PATH_VARIABLES if k in os.environ},
    }


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def path_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """The fields in which two keyed paths differ, as ``"field: A → B"`` lines (a field only one has included)."""
    fa, fb = _flatten(a), _flatten(b)
    return [
        f"{k}: {fa.get(k, '(absent)')} → {fb.get(k, '(absent)')}"
        for k in sorted(fa.keys() | fb.keys())
        if fa.get(k) != fb.get(k)
    ]


def describe(path: Mapping[str, Any]) -> str:
    """One line naming a keyed path: device, CPU, torch's capability, oneDNN's ISA, MKL's branch, faiss's SIMD."""
    t = path.get("torch", {})
    parts = [str(path.get("device", "?")), str(path.get("cpu", "?")), f"torch {t.get('capability', '?')}"]
    if "onednn" in t:
        parts.append(f"oneDNN {t['onednn']}")
    if "mkl" in t:
        parts.append(f"MKL {t['mkl']}")
    if "faiss" in path:
        parts.append(f"faiss {path['faiss'].get('simd')}")
    if "cuda" in path:
        parts.append(f"GPU {path['cuda'].get('name')}")
    return "; ".join(parts)


def check_worker_path(driver: Mapping[str, Any], mine: Mapping[str, Any], *, worker: str) -> None:
    """Refuse to compute a driver's cells on a numeric path other than the one its plan was keyed with.

    ``driver`` and ``mine``: the keyed paths of the driver's plan and of this worker's (:attr:`Plan.numeric_path`);
    ``worker``: this worker's name for the message. Raises :class:`~advbench.errors.AdvbenchError` naming both.
    """
    from advbench.errors import AdvbenchError

    diff = path_differences(driver, mine)
    if diff:
        raise AdvbenchError(
            f"worker {worker} computes on another numeric path than the driver planned, so its cells would "
            f"carry keys they were not computed under.\n  driver: {describe(driver)}\n  worker: {describe(mine)}\n"
            f"  differences: {'; '.join(diff)}\nRun the suite on nodes of one CPU kind and one set of library "
            f"builds (or one run per kind, each with its own keys)"
        )
