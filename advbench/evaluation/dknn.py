"""Deep k-Nearest Neighbors (Papernot & McDaniel 2018): credibility from per-layer neighbour votes.

For each chosen layer of a :class:`~advbench.models.Classifier`, the training set's representations
are indexed in faiss; an input's ``k`` nearest training points in every layer give the nonconformity
of each label ``j``::

    alpha(x, j) = sum over layers of |{neighbours of x in that layer whose label != j}|

A held-out calibration set gives ``A = {alpha(x_c, y_c)}``; the p-value of label ``j`` is
``p_j(x) = |{a in A : a >= alpha(x, j)}| / |A|``; the prediction is ``argmax_j p_j``, the credibility
the largest p-value and the confidence one minus the second largest (docs/method.md, section 6).

Determinism and ties
    Nonconformities are integers and p-values are exact ratios of integer counts, so everything
    after the neighbour search is exact. Ties between p-values are broken towards the smaller class
    index (``numpy.argmax``). Ties between *distances* at the k-th neighbour are broken by faiss
    (for exact search: in practice the lower training index); faiss computes distances in float32,
    so two training points whose distances to a query differ by less than float32 rounding may be
    ranked either way. Continuous data almost never has such ties.

Memory
    Representations are computed in chunks of ``batch_size`` inputs and streamed into the indices, so
    besides the indices themselves at most one chunk of every layer is held (plus, for an index that
    must be trained -- IVF or PCA -- one layer's training sample). Queries are scored chunk by chunk.

Distances
    ``"euclidean"`` ranks by L2 distance; ``"cosine"`` L2-normalises every vector first (faiss
    ``L2norm``), which ranks exactly as cosine distance. ``reduce_dim`` prepends a PCA
    (``faiss.PCAMatrix``) to every layer wider than ``reduce_dim``; approximate indices (``"ivf"``,
    ``"hnsw"``) and PCA report their :meth:`DkNN.recall_at_k` against exact search.

Per-example outputs
    :meth:`DkNN.predict` also returns each layer's per-class neighbour counts (``layer_votes``) and
    ``k``; :func:`example_records` turns an output, the labels, example ids and the classifier's
    softmax into one tidy row per input (all p-values, the true- and predicted-label p-values,
    neighbours per layer carrying the DkNN's prediction, the softmax's prediction and the true label,
    the maximum softmax probability, and ``fooled`` for adversarial sets). The metrics over those rows
    are in :mod:`advbench.evaluation.calibration`.

Persistence
    :meth:`DkNN.save` writes one faiss index file per layer (``faiss.write_index``: the bytes of
    ``faiss.serialize_index``, streamed to disk rather than copied in memory), the labels and
    calibration scores as ``.npz`` (read back with ``allow_pickle=False``) and a JSON manifest holding
    every file's sha256 and a fingerprint of the model's weights. :meth:`DkNN.load` verifies all of
    them and raises :class:`~advbench.errors.CacheError` on any mismatch. No pickle anywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import pandas as pd
import torch

from advbench.errors import CacheError
from advbench.hashing import sha256_file
from advbench.models.classifier import Classifier

__all__ = ["DkNN", "DkNNOutput", "conformal_p_values", "example_records", "model_fingerprint", "softmax_probabilities"]

log = logging.getLogger(__name__)

IndexKind = Literal["exact", "ivf", "hnsw"]
Distance = Literal["euclidean", "cosine"]

_FORMAT = "advbench.dknn"
_VERSION = 1
_MANIFEST = "dknn.json"
_ARRAYS = "arrays.npz"


@dataclass(frozen=True)
class DkNNOutput:
    """DkNN scores of N inputs over C classes (numpy arrays).

    ``prediction`` (N,) int64 = argmax of ``p_values`` (ties to the smaller class);
    ``credibility`` (N,) float64 = the largest p-value; ``confidence`` (N,) float64 = 1 - the second
    largest; ``p_values`` (N, C) float64; ``nonconformity`` (N, C) int64 = alpha(x, j);
    ``knn_labels`` (only when asked for) maps each layer to the (N, k) int64 labels of the
    neighbours, nearest first (-1 where an approximate index returned fewer than k).
    ``layer_votes`` maps each layer to the (N, C) int64 number of its ``k`` neighbours carrying each
    label (``nonconformity == L * k - sum of layer_votes``); ``k`` is the neighbours per layer. Both
    are set by :meth:`DkNN.predict`.
    """

    prediction: np.ndarray
    credibility: np.ndarray
    confidence: np.ndarray
    p_values: np.ndarray
    nonconformity: np.ndarray
    knn_labels: dict[str, np.ndarray] | None = None
    layer_votes: dict[str, np.ndarray] | None = None
    k: int | None = None

    def __len__(self) -> int:
        return int(self.prediction.shape[0])

    def p_value_of(self, labels: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N,) float64: each input's p-value for the given label (e.g. the true one)."""
        y = self._per_input_labels(labels, "labels")
        return self.p_values[np.arange(len(y)), y]

    def neighbour_counts(self, labels: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        """Per layer, (N,) int64: how many of the ``k`` neighbours carry each input's given label.

        ``neighbour_counts(out.prediction)`` counts the neighbours that agree with the DkNN's
        prediction; ``neighbour_counts(y)`` those carrying the true label.
        """
        if self.layer_votes is None:
            raise ValueError("this DkNNOutput has no layer_votes; it was not made by DkNN.predict")
        y = self._per_input_labels(labels, "labels")
        rows = np.arange(len(y))
        return {name: votes[rows, y] for name, votes in self.layer_votes.items()}

    def _per_input_labels(self, labels: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
        y = _labels(labels, self.p_values.shape[1], what)
        if y.shape != self.prediction.shape:
            raise ValueError(f"expected {len(self)} {what}, one per input, got shape {tuple(y.shape)}")
        return y

    def accuracy(self, y: np.ndarray | torch.Tensor) -> float:
        """Fraction of DkNN predictions equal to the labels ``y``."""
        yy = _labels(y, None, "y")
        if yy.shape != self.prediction.shape:
            raise ValueError(f"expected {len(self)} labels, got shape {tuple(yy.shape)}")
        return float(np.mean(self.prediction == yy)) if len(yy) else float("nan")


class DkNN:
    """Deep k-Nearest Neighbors over a classifier's layers, with faiss indices.

    >>> dknn = DkNN(model, k=75).fit(x_train, y_train).calibrate(x_cal, y_cal)  # doctest: +SKIP
    >>> out = dknn.predict(x_test)                                              # doctest: +SKIP
    >>> out.credibility.mean()                                                  # doctest: +SKIP

    Args:
        model: the classifier; its ``features(x, layers)`` gives the representations. It is run in
            eval mode (its mode is restored afterwards) without gradients.
        layers: layers to index; default every hidden layer and the logits (``model.layer_names``).
        k: neighbours per layer.
        index: ``"exact"`` (faiss flat, the default), ``"ivf"`` (inverted lists; ``nlist`` cells,
            ``nprobe`` visited) or ``"hnsw"`` (graph with ``hnsw_m`` links, ``ef_search`` at query).
        distance: ``"euclidean"`` or ``"cosine"``.
        reduce_dim: if set, PCA to this many dimensions on every layer wider than it.
        batch_size: inputs per chunk, for representation extraction and search alike.
        nlist: IVF cells; default ``round(sqrt(n_train))`` capped so each cell has >= 39 training points.
        nprobe: IVF cells visited per query.
        hnsw_m: HNSW links per node.
        ef_search: HNSW search breadth (at least ``k`` is used).
        train_size: at most this many training points (a seeded random subset) train IVF / PCA.
    """

    def __init__(
        self,
        model: Classifier,
        *,
        layers: Sequence[str] | None = None,
        k: int = 75,
        index: IndexKind = "exact",
        distance: Distance = "euclidean",
        reduce_dim: int | None = None,
        batch_size: int = 500,
        nlist: int | None = None,
        nprobe: int = 16,
        hnsw_m: int = 32,
        ef_search: int = 128,
        train_size: int = 20_000,
    ) -> None:
        readable = list(model.layer_names)
        chosen = list(readable if layers is None else layers)
        if isinstance(layers, str):
            raise TypeError(f"expected a sequence of layer names, got the string {layers!r}; write [{layers!r}]")
        unknown = [name for name in chosen if name not in readable]
        if unknown or not chosen:
            raise ValueError(f"expected layers among {readable}, got {chosen}; pass layers=None for all of them")
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"layers must be distinct, got {chosen}")
        _check_int("k", k, 1)
        _check_int("batch_size", batch_size, 1)
        _check_int("nprobe", nprobe, 1)
        _check_int("hnsw_m", hnsw_m, 2)
        _check_int("ef_search", ef_search, 1)
        _check_int("train_size", train_size, 1)
        if nlist is not None:
            _check_int("nlist", nlist, 1)
        if reduce_dim is not None:
            _check_int("reduce_dim", reduce_dim, 1)
        if index not in ("exact", "ivf", "hnsw"):
            raise ValueError(f"expected index 'exact', 'ivf' or 'hnsw', got {index!r}")
        if distance not in ("euclidean", "cosine"):
            raise ValueError(f"expected distance 'euclidean' or 'cosine', got {distance!r}")
        self.model = model
        self.layers: tuple[str, ...] = tuple(chosen)
        self.k = k
        self.index = index
        self.distance = distance
        self.reduce_dim = reduce_dim
        self.batch_size = batch_size
        self.nlist = nlist
        self.nprobe = nprobe
        self.hnsw_m = hnsw_m
        self.ef_search = ef_search
        self.train_size = train_size
        self.num_classes = int(model.num_classes)
        # set by fit / calibrate / load
        self.indices: dict[str, Any] = {}
        self.index_specs: dict[str, str] = {}
        self.dims: dict[str, int] = {}
        self.y_train: np.ndarray | None = None
        self.calibration_scores: np.ndarray | None = None  # sorted alpha(x_c, y_c), int64
        #: recall@k of each layer's index against exact search (set by :meth:`recall_at_k`)
        self.recall: dict[str, float] = {}
        #: seconds spent in representation extraction and in search by the last fit/calibrate/predict
        self.last_timings: dict[str, float] = {}

    def _params(self) -> dict[str, Any]:
        return {
            "layers": list(self.layers),
            "k": self.k,
            "index": self.index,
            "distance": self.distance,
            "reduce_dim": self.reduce_dim,
            "batch_size": self.batch_size,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "hnsw_m": self.hnsw_m,
            "ef_search": self.ef_search,
            "train_size": self.train_size,
        }

    def __repr__(self) -> str:
        p = self._params()
        keys = ["layers", "k", "index", "distance", "reduce_dim"]
        if self.index == "ivf":
            keys += ["nlist", "nprobe"]
        elif self.index == "hnsw":
            keys += ["hnsw_m", "ef_search"]
        return f"DkNN({', '.join(f'{key}={p[key]!r}' for key in keys)})"

    @property
    def is_fitted(self) -> bool:
        return self.y_train is not None

    @property
    def is_calibrated(self) -> bool:
        return self.calibration_scores is not None

    # -- building ---------------------------------------------------------------------------------
    def fit(self, x_train: torch.Tensor | np.ndarray, y_train: torch.Tensor | np.ndarray) -> DkNN:
        """Index the training representations of every layer; returns ``self``.

        Representations are extracted chunk by chunk and added to the indices as they come, so no
        layer's full matrix is held outside its index. IVF / PCA indices are first trained on a
        seeded random subset of at most ``train_size`` training points, one layer at a time.
        """
        x = _inputs(x_train, "x_train")
        y = _labels(y_train, self.num_classes, "y_train")
        n = len(x)
        if len(y) != n:
            raise ValueError(f"x_train has {n} examples but y_train has {len(y)}; pass matching arrays")
        if n < self.k:
            raise ValueError(f"k={self.k} neighbours asked for but only {n} training points given; lower k")
        timings = {"features_s": 0.0, "search_s": 0.0, "index_s": 0.0}
        probe = next(self._chunks(x[:1], self.layers, timings))
        self.dims = {name: int(v.shape[1]) for name, v in probe.items()}
        nlist = self._nlist(n)
        self.indices, self.index_specs = {}, {}
        for name in self.layers:
            spec = self._spec(self.dims[name], nlist)
            self.index_specs[name] = spec
            self.indices[name] = faiss.index_factory(self.dims[name], spec, faiss.METRIC_L2)
        untrained = [name for name in self.layers if not self.indices[name].is_trained]
        if untrained:
            sample = np.sort(np.random.default_rng(0).choice(n, size=min(n, self.train_size), replace=False))
            xs = x[torch.from_numpy(sample)]
            for name in untrained:  # one layer's sample at a time
                sample_feats = np.concatenate([f[name] for f in self._chunks(xs, (name,), timings)])
                t0 = time.perf_counter()
                _train_pca(self.indices[name], sample_feats)
                self.indices[name].train(sample_feats)  # the rest of the chain (IVF); a trained PCA is kept
                timings["index_s"] += time.perf_counter() - t0
                del sample_feats
        for feats in self._chunks(x, self.layers, timings):
            t0 = time.perf_counter()
            for name in self.layers:
                self.indices[name].add(feats[name])
            timings["index_s"] += time.perf_counter() - t0
        for index in self.indices.values():
            self._tune(index)
        self.y_train = y
        self.calibration_scores = None
        self.recall = {name: 1.0 for name in self.layers if self._is_exact(name)}
        self.last_timings = timings
        log.info("%r indexed %d training points in %s", self, n, _fmt(timings))
        return self

    def calibrate(self, x_cal: torch.Tensor | np.ndarray, y_cal: torch.Tensor | np.ndarray) -> DkNN:
        """Store the calibration nonconformities ``A = {alpha(x_c, y_c)}``; returns ``self``.

        The calibration set must be disjoint from the training set (the caller's responsibility:
        :func:`advbench.data.make_splits` holds it out).
        """
        self._require_fitted()
        x = _inputs(x_cal, "x_cal")
        y = _labels(y_cal, self.num_classes, "y_cal")
        if len(y) != len(x):
            raise ValueError(f"x_cal has {len(x)} examples but y_cal has {len(y)}; pass matching arrays")
        if len(y) == 0:
            raise ValueError("the calibration set is empty; the DkNN needs at least one calibration point")
        alpha, _, _ = self._nonconformity(x, keep_labels=False)
        self.calibration_scores = np.sort(alpha[np.arange(len(y)), y])
        return self

    # -- scoring ----------------------------------------------------------------------------------
    def predict(self, x: torch.Tensor | np.ndarray, *, return_neighbors: bool = False) -> DkNNOutput:
        """DkNN prediction, credibility, confidence and p-values of ``x`` (scored chunk by chunk)."""
        self._require_fitted()
        if self.calibration_scores is None:
            raise RuntimeError("the DkNN is not calibrated; call calibrate(x_cal, y_cal) before predict")
        alpha, knn, layer_votes = self._nonconformity(_inputs(x, "x"), keep_labels=return_neighbors)
        p = self.p_values(alpha)
        pred = np.argmax(p, axis=1)
        rows = np.arange(len(pred))
        second = np.sort(p, axis=1)[:, -2] if p.shape[1] > 1 else np.zeros(len(pred))
        return DkNNOutput(
            prediction=pred.astype(np.int64),
            credibility=p[rows, pred],
            confidence=1.0 - second,
            p_values=p,
            nonconformity=alpha,
            knn_labels=knn,
            layer_votes=layer_votes,
            k=self.k,
        )

    def p_values(self, alpha: np.ndarray) -> np.ndarray:
        """``p[i, j] = |{a in A : a >= alpha[i, j]}| / |A|`` for integer nonconformities ``alpha``."""
        if self.calibration_scores is None:
            raise RuntimeError("the DkNN is not calibrated; call calibrate(x_cal, y_cal) first")
        return conformal_p_values(self.calibration_scores, alpha)

    def nonconformity(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        """``alpha(x, j)`` for every input and class: (N, C) int64."""
        self._require_fitted()
        return self._nonconformity(_inputs(x, "x"), keep_labels=False)[0]

    def neighbors(self, x: torch.Tensor | np.ndarray, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """Squared distances (as faiss reports them) and training indices of the k neighbours in ``layer``."""
        self._require_fitted()
        if layer not in self.indices:
            raise ValueError(f"expected one of the indexed layers {list(self.layers)}, got {layer!r}")
        dist, ids = [], []
        for feats in self._chunks(_inputs(x, "x"), (layer,), {}):
            d, i = self.indices[layer].search(feats[layer], self.k)
            dist.append(d)
            ids.append(i)
        return _cat(dist, (0, self.k), np.float32), _cat(ids, (0, self.k), np.int64)

    def recall_at_k(
        self, x_train: torch.Tensor | np.ndarray, x_query: torch.Tensor | np.ndarray, *, k: int | None = None
    ) -> dict[str, float]:
        """Per layer, the mean fraction of the exact k nearest neighbours that this DkNN's index finds.

        ``x_train`` must be the training inputs given to :meth:`fit` (same order); ``x_query`` are the
        queries to measure on (e.g. a slice of the test set -- the run's own data). Exact search is
        rebuilt one layer at a time in the original (unreduced) space with the same distance. Layers
        whose index is already exact (flat, no PCA) report 1.0 without searching. The result is also
        stored in :attr:`recall` and saved with the index.
        """
        self._require_fitted()
        assert self.y_train is not None
        kk = self.k if k is None else k
        _check_int("k", kk, 1)
        if kk > self.k:
            raise ValueError(f"recall@k is measured for k <= the DkNN's k={self.k}, got k={kk}")
        xt, xq = _inputs(x_train, "x_train"), _inputs(x_query, "x_query")
        if len(xt) != len(self.y_train):
            raise ValueError(f"expected the {len(self.y_train)} training inputs given to fit, got {len(xt)}")
        out: dict[str, float] = {}
        timings: dict[str, float] = {}
        for name in self.layers:
            if self._is_exact(name):
                out[name] = 1.0
                continue
            exact = faiss.index_factory(self.dims[name], "L2norm,Flat" if self.distance == "cosine" else "Flat")
            for feats in self._chunks(xt, (name,), timings):
                exact.add(feats[name])
            hits, total = 0, 0
            for feats in self._chunks(xq, (name,), timings):
                _, truth = exact.search(feats[name], kk)
                _, found = self.indices[name].search(feats[name], kk)
                for t_row, f_row in zip(truth, found, strict=True):
                    hits += len(np.intersect1d(t_row, f_row[f_row >= 0], assume_unique=True))
                total += truth.size
            del exact
            out[name] = hits / total if total else float("nan")
        self.recall.update(out)
        log.info("%r recall@%d: %s", self, kk, out)
        return out

    # -- persistence ------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the indices, labels, calibration scores and a sha256 manifest into ``directory``."""
        self._require_fitted()
        assert self.y_train is not None
        path = Path(directory)
        manifest_path = path / _MANIFEST
        if manifest_path.exists() and not overwrite:
            raise FileExistsError(f"{path} already holds a saved DkNN; pass overwrite=True or choose another directory")
        path.mkdir(parents=True, exist_ok=True)
        if manifest_path.exists():
            manifest_path.unlink()  # an interrupted overwrite must not leave a valid-looking manifest
        files: dict[str, str] = {}
        index_files: dict[str, str] = {}
        for i, name in enumerate(self.layers):
            fname = f"index_{i}.faiss"
            faiss.write_index(self.indices[name], str(path / fname))
            files[fname] = sha256_file(path / fname)
            index_files[name] = fname
        buf = io.BytesIO()
        arrays: dict[str, Any] = {"y_train": self.y_train}
        if self.calibration_scores is not None:
            arrays["calibration_scores"] = self.calibration_scores
        np.savez(buf, **arrays)
        data = buf.getvalue()
        (path / _ARRAYS).write_bytes(data)
        files[_ARRAYS] = hashlib.sha256(data).hexdigest()
        manifest = {
            "format": _FORMAT,
            "version": _VERSION,
            "params": self._params(),
            "num_classes": self.num_classes,
            "dims": self.dims,
            "index_specs": self.index_specs,
            "index_files": index_files,
            "n_train": len(self.y_train),
            "recall": self.recall,
            "model_sha256": model_fingerprint(self.model),
            "files": files,
        }
        tmp = path / (_MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        os.replace(tmp, manifest_path)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike[str], model: Classifier) -> DkNN:
        """Read a DkNN written by :meth:`save`, verifying every file's sha256 and the model's weights.

        Raises :class:`~advbench.errors.CacheError` if anything is missing, altered or was built for
        other weights; delete the directory to rebuild.
        """
        path = Path(directory)
        hint = f"delete {path} to rebuild the index"
        try:
            manifest = json.loads((path / _MANIFEST).read_text())
        except FileNotFoundError:
            raise CacheError(f"no saved DkNN in {path} (missing {_MANIFEST})") from None
        except (OSError, ValueError) as exc:
            raise CacheError(f"unreadable DkNN manifest {path / _MANIFEST}: {exc}; {hint}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT or manifest.get("version") != _VERSION:
            raise CacheError(f"{path / _MANIFEST} is not a version-{_VERSION} {_FORMAT} manifest; {hint}")
        try:
            files: dict[str, str] = manifest["files"]
            for fname, expected in files.items():
                if Path(fname).name != fname:
                    raise CacheError(f"{path / _MANIFEST} names a file outside its directory: {fname!r}; {hint}")
                fpath = path / fname
                if not fpath.is_file():
                    raise CacheError(f"{fpath} is missing; {hint}")
                got = sha256_file(fpath)
                if got != expected:
                    raise CacheError(f"{fpath} is corrupt: sha256 {got}, expected {expected}; {hint}")
            got_model = model_fingerprint(model)
            if got_model != manifest["model_sha256"]:
                raise CacheError(
                    f"the DkNN in {path} was built for other model weights (sha256 {manifest['model_sha256']}, "
                    f"this model {got_model}); {hint}"
                )
            dknn = cls(model, **manifest["params"])
            if dknn.num_classes != manifest["num_classes"]:
                raise CacheError(f"{path}: {manifest['num_classes']} classes saved, the model has {dknn.num_classes}")
            with np.load(io.BytesIO((path / _ARRAYS).read_bytes()), allow_pickle=False) as arrays:
                dknn.y_train = np.asarray(arrays["y_train"], dtype=np.int64)
                if "calibration_scores" in arrays:
                    dknn.calibration_scores = np.asarray(arrays["calibration_scores"], dtype=np.int64)
            dknn.dims = {str(k): int(v) for k, v in manifest["dims"].items()}
            dknn.index_specs = dict(manifest["index_specs"])
            dknn.recall = {str(k): float(v) for k, v in manifest["recall"].items()}
            for name in dknn.layers:
                index = faiss.read_index(str(path / manifest["index_files"][name]))
                if index.ntotal != manifest["n_train"] or index.d != dknn.dims[name]:
                    raise CacheError(
                        f"{path}: the index of layer {name!r} holds {index.ntotal} vectors of width {index.d}, "
                        f"expected {manifest['n_train']} of width {dknn.dims[name]}; {hint}"
                    )
                dknn._tune(index)
                dknn.indices[name] = index
        except CacheError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, OSError) as exc:
            raise CacheError(f"could not read the DkNN in {path}: {type(exc).__name__}: {exc}; {hint}") from None
        return dknn

    # -- internals --------------------------------------------------------------------------------
    def _require_fitted(self) -> None:
        if self.y_train is None:
            raise RuntimeError("the DkNN has no index; call fit(x_train, y_train) or DkNN.load(directory, model)")

    def _nlist(self, n: int) -> int:
        if self.nlist is not None:
            return self.nlist
        return max(1, min(round(math.sqrt(n)), min(n, self.train_size) // 39))

    def _spec(self, dim: int, nlist: int) -> str:
        parts = ["L2norm"] if self.distance == "cosine" else []
        if self.reduce_dim is not None and self.reduce_dim < dim:
            parts.append(f"PCA{self.reduce_dim}")
        parts.append({"exact": "Flat", "ivf": f"IVF{nlist},Flat", "hnsw": f"HNSW{self.hnsw_m}"}[self.index])
        return ",".join(parts)

    def stored_features(self, layer: str) -> np.ndarray | None:
        """The training representations of ``layer`` exactly as indexed ((N, D) float32, a copy), or ``None``
        when the index does not keep them verbatim (a PCA, a cosine normalisation, an approximate index)."""
        self._require_fitted()
        if self.index_specs.get(layer) != "Flat":
            return None
        index = self.indices[layer]
        return np.asarray(index.reconstruct_n(0, index.ntotal), dtype=np.float32)

    def _is_exact(self, name: str) -> bool:
        return self.index == "exact" and "PCA" not in self.index_specs.get(name, "")

    def _tune(self, index: Any) -> None:
        ps = faiss.ParameterSpace()
        if self.index == "ivf":
            ps.set_index_parameter(index, "nprobe", self.nprobe)
        elif self.index == "hnsw":
            ps.set_index_parameter(index, "efSearch", max(self.ef_search, self.k))

    def _extract(self, x: torch.Tensor, layers: Sequence[str], timings: dict[str, float]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        device = _device(self.model)
        with torch.inference_mode():
            feats = self.model.features(x.to(device), list(layers))
            out = {
                name: np.ascontiguousarray(t.reshape(t.shape[0], -1).float().cpu().numpy(), dtype=np.float32)
                for name, t in feats.items()
            }
        timings["features_s"] = timings.get("features_s", 0.0) + time.perf_counter() - t0
        return out

    def _chunks(
        self, x: torch.Tensor, layers: Sequence[str], timings: dict[str, float]
    ) -> Iterator[dict[str, np.ndarray]]:
        with _eval_mode(self.model):
            for start in range(0, len(x), self.batch_size):
                yield self._extract(x[start : start + self.batch_size], layers, timings)

    def _nonconformity(
        self, x: torch.Tensor, *, keep_labels: bool
    ) -> tuple[np.ndarray, dict[str, np.ndarray] | None, dict[str, np.ndarray]]:
        """alpha (N, C) int64, if asked each layer's (N, k) neighbour labels, and each layer's (N, C) votes."""
        assert self.y_train is not None
        C, k, L = self.num_classes, self.k, len(self.layers)
        timings = {"features_s": 0.0, "search_s": 0.0}
        votes: list[np.ndarray] = []
        per_layer: dict[str, list[np.ndarray]] = {name: [] for name in self.layers}
        knn: dict[str, list[np.ndarray]] | None = {name: [] for name in self.layers} if keep_labels else None
        missing = 0
        for feats in self._chunks(x, self.layers, timings):
            b = next(iter(feats.values())).shape[0]
            count = np.zeros(b * C, dtype=np.int64)
            offsets = (np.arange(b, dtype=np.int64) * C)[:, None]
            for name in self.layers:
                t0 = time.perf_counter()
                _, ids = self.indices[name].search(feats[name], k)
                timings["search_s"] += time.perf_counter() - t0
                found = ids >= 0
                labels = np.where(found, self.y_train[np.where(found, ids, 0)], -1)
                missing += int(ids.size - found.sum())
                layer_count = np.bincount((labels + offsets)[found], minlength=b * C)
                count += layer_count
                per_layer[name].append(layer_count.reshape(b, C))
                if knn is not None:
                    knn[name].append(labels)
            votes.append(count.reshape(b, C))
        if missing:
            warnings.warn(
                f"{missing} neighbour slots came back empty from the {self.index!r} index (too few points in the "
                f"probed cells); they count against every label. Raise nprobe / ef_search.",
                RuntimeWarning,
                stacklevel=3,
            )
        self.last_timings = timings
        alpha = L * k - _cat(votes, (0, C), np.int64)
        labels_out = {n: _cat(v, (0, k), np.int64) for n, v in knn.items()} if knn is not None else None
        layer_votes = {n: _cat(v, (0, C), np.int64) for n, v in per_layer.items()}
        return alpha, labels_out, layer_votes


def conformal_p_values(calibration_scores: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``p = |{a in A : a >= alpha}| / |A|`` elementwise, for the *sorted* calibration scores ``A``.

    The DkNN's p-value (Papernot & McDaniel 2018; no ``+1`` for the test point, so ``P(p < eps)`` can
    exceed ``eps`` by at most ``1 / (|A| + 1)``). Works for integer and real nonconformities.
    """
    A = np.asarray(calibration_scores)
    if A.ndim != 1 or A.size == 0:
        raise ValueError(f"expected a non-empty 1-d array of sorted calibration scores, got shape {A.shape}")
    at_least = len(A) - np.searchsorted(A, alpha, side="left")
    return at_least.astype(np.float64) / float(len(A))


def softmax_probabilities(model: torch.nn.Module, x: torch.Tensor | np.ndarray, *, batch_size: int = 500) -> np.ndarray:
    """(N, C) float64 softmax of ``model(x)``, computed in eval mode without gradients, in chunks."""
    _check_int("batch_size", batch_size, 1)
    xt = _inputs(x, "x")
    device = _device(model)
    parts = []
    with _eval_mode(model), torch.inference_mode():
        for start in range(0, len(xt), batch_size):
            logits = model(xt[start : start + batch_size].to(device))
            parts.append(torch.softmax(logits.double(), dim=1).cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float64)


def example_records(
    out: DkNNOutput,
    *,
    labels: np.ndarray | torch.Tensor | None,
    example_ids: np.ndarray | Sequence[int],
    softmax: np.ndarray | torch.Tensor,
    clean_correct: np.ndarray | None = None,
    mahalanobis: np.ndarray | None = None,
) -> pd.DataFrame:
    """One tidy row per input: the DkNN's p-values and neighbour counts next to the softmax.

    Args:
        out: :meth:`DkNN.predict` of the inputs (it carries ``layer_votes`` and ``k``).
        labels: the true labels, or None for inputs without a class (then ``label``, ``p_true``,
            ``nbr_true/*`` and the correctness columns are missing values).
        example_ids: a stable id per input, e.g. its position in the test split; adversarial and
            shifted copies of a test image carry that image's id, so sets can be joined on it.
        softmax: (N, C) class probabilities of the same classifier on the same inputs
            (:func:`softmax_probabilities`).
        clean_correct: for an adversarial set, whether the classifier's softmax prediction on each
            input's *clean* version was right; adds ``fooled`` = clean right and adversarial wrong.
        mahalanobis: the Mahalanobis confidence of each input
            (:func:`~advbench.evaluation.mahalanobis.mahalanobis_scores`, higher = more in-distribution);
            adds the column ``mahalanobis``.

    Columns: ``example, label, prediction`` (the DkNN's), ``correct, credibility, confidence, p_true,
    p_pred`` (= credibility), ``p_0 .. p_{C-1}, k``, then per layer ``nbr_pred/<layer>`` (neighbours
    carrying the DkNN prediction), ``nbr_softmax_pred/<layer>`` (carrying the softmax prediction --
    the attacker's label on a successful attack) and ``nbr_true/<layer>``; then ``msp`` (maximum
    softmax probability), ``softmax_pred``, ``softmax_correct`` and, if asked, ``fooled``.
    """
    n = len(out)
    if out.layer_votes is None or out.k is None:
        raise ValueError("expected a DkNNOutput from DkNN.predict (with layer_votes and k); got one without them")
    ids = np.asarray(example_ids)
    if ids.shape != (n,):
        raise ValueError(f"expected {n} example ids, one per input, got shape {ids.shape}")
    prob = np.asarray(softmax.detach().cpu().numpy() if isinstance(softmax, torch.Tensor) else softmax, np.float64)
    C = out.p_values.shape[1]
    if prob.shape != (n, C) or not np.isfinite(prob).all():
        raise ValueError(f"expected softmax as finite (N={n}, C={C}) probabilities, got shape {prob.shape}")
    if n and not np.allclose(prob.sum(1), 1.0, atol=1e-4):
        raise ValueError("expected softmax rows summing to 1; pass probabilities (softmax_probabilities), not logits")
    soft_pred = np.argmax(prob, axis=1).astype(np.int64)
    cols: dict[str, Any] = {"example": ids}
    y = None if labels is None else out._per_input_labels(labels, "labels")
    missing_int = pd.array([pd.NA] * n, dtype="Int64")
    cols["label"] = missing_int if y is None else y
    cols["prediction"] = out.prediction
    cols["correct"] = pd.array([pd.NA] * n, dtype="boolean") if y is None else out.prediction == y
    cols["credibility"] = out.credibility
    cols["confidence"] = out.confidence
    cols["p_true"] = np.full(n, np.nan) if y is None else out.p_value_of(y)
    cols["p_pred"] = out.p_value_of(out.prediction)
    for j in range(C):
        cols[f"p_{j}"] = out.p_values[:, j]
    cols["k"] = np.full(n, out.k, dtype=np.int64)
    by_pred = out.neighbour_counts(out.prediction)
    by_soft = out.neighbour_counts(soft_pred)
    by_true = None if y is None else out.neighbour_counts(y)
    for name in out.layer_votes:
        cols[f"nbr_pred/{name}"] = by_pred[name]
        cols[f"nbr_softmax_pred/{name}"] = by_soft[name]
        cols[f"nbr_true/{name}"] = missing_int if by_true is None else by_true[name]
    cols["msp"] = prob.max(axis=1) if n else np.zeros(0)
    cols["softmax_pred"] = soft_pred
    cols["softmax_correct"] = pd.array([pd.NA] * n, dtype="boolean") if y is None else soft_pred == y
    if mahalanobis is not None:
        maha = np.asarray(mahalanobis, dtype=np.float64)
        if maha.shape != (n,) or not np.isfinite(maha).all():
            raise ValueError(f"expected {n} finite Mahalanobis scores, one per input, got shape {maha.shape}")
        cols["mahalanobis"] = maha
    if clean_correct is not None:
        cc = np.asarray(clean_correct)
        if cc.shape != (n,) or (cc.size and cc.dtype != np.bool_):
            raise ValueError(f"expected clean_correct as {n} booleans, got {cc.dtype} of shape {cc.shape}")
        if y is None:
            raise ValueError("fooled needs the true labels; pass labels with clean_correct")
        cols["fooled"] = cc & (soft_pred != y)
    return pd.DataFrame(cols)


def _train_pca(index: Any, sample: np.ndarray) -> None:
    """Fit the ``PCAMatrix`` of an ``IndexPreTransform`` chain, if any, with a randomized PCA.

    faiss's own ``PCAMatrix.train`` runs a dense eigendecomposition of the d x d covariance (minutes for
    a 6,272-wide layer on two cores); ``torch.pca_lowrank`` (Halko et al., 4 power iterations, fixed
    seed) finds the leading ``d_out`` components in seconds. The result is written into the faiss
    transform, so the index is still a plain, serialisable faiss index; its recall is measured by
    :meth:`DkNN.recall_at_k` like any other approximation.
    """
    index = faiss.downcast_index(index)
    if not isinstance(index, faiss.IndexPreTransform):
        return
    chain: Any = index.chain  # a SWIG vector (the stubs say list)
    for i in range(chain.size()):
        vt = faiss.downcast_VectorTransform(chain.at(i))
        if isinstance(vt, faiss.PCAMatrix):
            n, d = sample.shape
            r = int(vt.d_out)
            if r > min(n, d):
                raise ValueError(f"reduce_dim={r} needs at least {r} training points, got {n}; lower reduce_dim")
            X = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                _, S, V = torch.pca_lowrank(X, q=min(r + 10, n, d), center=True, niter=4)
            faiss.copy_array_to_vector(X.mean(0).numpy().astype(np.float32), vt.mean)
            faiss.copy_array_to_vector(np.ascontiguousarray(V[:, :r].T.numpy(), dtype=np.float32).ravel(), vt.PCAMat)
            faiss.copy_array_to_vector((S[:r] ** 2 / max(n - 1, 1)).numpy().astype(np.float32), vt.eigenvalues)
            vt.is_trained = True
            vt.prepare_Ab()
            return
        sample = vt.apply(sample)  # e.g. L2norm before the PCA


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of a module's state (parameter and buffer names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _inputs(x: torch.Tensor | np.ndarray, what: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if not t.is_floating_point() or t.dim() < 2:
        raise ValueError(
            f"expected {what} as a float tensor (N, C, H, W) of pixels in [0, 1], got {t.dtype} {tuple(t.shape)}"
        )
    return t


def _labels(y: torch.Tensor | np.ndarray, num_classes: int | None, what: str) -> np.ndarray:
    arr = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"expected {what} as a 1-d integer array, got {arr.dtype} of shape {arr.shape}")
    arr = arr.astype(np.int64)
    if num_classes is not None and arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(f"expected {what} in [0, {num_classes}), got values in [{arr.min()}, {arr.max()}]")
    return arr


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"expected {name} an integer >= {low}, got {value!r}")


def _cat(parts: list[np.ndarray], empty_shape: tuple[int, int], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(empty_shape, dtype=dtype)


def _fmt(timings: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.2f}" for k, v in timings.items())
