"""advbench.evaluation.dknn: the DkNN against an independent brute-force numpy implementation, persistence (damaged
and hostile files refused, never unpickled) and approximate search."""

from __future__ import annotations

import io
import json
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from torch import nn

from advbench.errors import CacheError
from advbench.evaluation.calibration import detection_scores
from advbench.evaluation.dknn import DkNN, DkNNOutput, example_records
from advbench.hashing import sha256_file
from advbench.models import Classifier

C = 3


@pytest.fixture(autouse=True, scope="module")
def _one_faiss_thread():
    """These indices are tiny: OpenMP start-up and spinning on a shared 2-core box cost more than they save."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def tiny_model(seed: int = 0) -> Classifier:
    """flatten (12) -> tanh(linear 12->6) -> linear 6->3: features are easy to recompute in numpy."""
    torch.manual_seed(seed)
    blocks = [
        ("flat", nn.Flatten()),
        ("h", nn.Sequential(nn.Linear(12, 6), nn.Tanh())),
        ("logits", nn.Linear(6, C)),
    ]
    return Classifier(blocks, hidden=["flat", "h"], num_classes=C, input_shape=(1, 3, 4)).eval()


def numpy_features(model: Classifier, x: np.ndarray) -> dict[str, np.ndarray]:
    """The tiny model's representations in float64 numpy, computed from its weights (not by torch)."""
    W1 = model.blocks["h"][0].weight.detach().double().numpy()
    b1 = model.blocks["h"][0].bias.detach().double().numpy()
    W2 = model.blocks["logits"].weight.detach().double().numpy()
    b2 = model.blocks["logits"].bias.detach().double().numpy()
    flat = x.reshape(len(x), -1).astype(np.float64)  # mean 0, std 1: normalisation is the identity
    h = np.tanh(flat @ W1.T + b1)
    return {"flat": flat, "h": h, "logits": h @ W2.T + b2}


def make_data(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, 3, 4)).astype(np.float32)
    w = np.random.default_rng(1000).normal(size=(12, C))  # labels with some structure, shared by all splits
    y = np.argmax(x.reshape(n, -1) @ w + 0.5 * rng.normal(size=(n, C)), axis=1).astype(np.int64)
    return x, y


def brute_force_dknn(feats_train, y_train, feats_cal, y_cal, feats_test, *, k: int, distance: str, min_gap: float):
    """The DkNN written out with loops: argsort-based kNN, per-class disagreement counts, p-values."""

    def prep(F: np.ndarray) -> np.ndarray:
        if distance == "cosine":
            return F / np.linalg.norm(F, axis=1, keepdims=True)
        return F

    def alpha(feats_q: dict[str, np.ndarray]) -> np.ndarray:
        n = len(next(iter(feats_q.values())))
        out = np.zeros((n, C), dtype=np.int64)
        for layer, F_tr in feats_train.items():
            T, Q = prep(F_tr), prep(feats_q[layer])
            for i in range(n):
                d = np.sum((T - Q[i]) ** 2, axis=1)
                order = np.argsort(d, kind="stable")
                # the test data must have no near-tie at the k-th neighbour: faiss ranks in float32, this
                # in float64, so the gap must exceed float32 rounding of |q|^2 + |t|^2 - 2 q.t
                scale = np.sum(Q[i] ** 2) + np.max(np.sum(T**2, axis=1))
                assert d[order[k]] - d[order[k - 1]] > min_gap * scale, (layer, i)
                labels = y_train[order[:k]]
                for j in range(C):
                    out[i, j] += int(np.sum(labels != j))
        return out

    A = alpha(feats_cal)[np.arange(len(y_cal)), y_cal]
    a_test = alpha(feats_test)
    n = len(a_test)
    p = np.zeros((n, C))
    pred = np.zeros(n, dtype=np.int64)
    cred, conf = np.zeros(n), np.zeros(n)
    for i in range(n):
        for j in range(C):
            p[i, j] = sum(1 for a in A if a >= a_test[i, j]) / len(A)
        best = 0
        for j in range(1, C):  # first maximum wins
            if p[i, j] > p[i, best]:
                best = j
        pred[i] = best
        cred[i] = p[i, best]
        conf[i] = 1.0 - sorted(p[i])[-2]
    return a_test, p, pred, cred, conf


@pytest.mark.parametrize(
    ("k", "distance", "layers"),
    [(7, "euclidean", None), (11, "cosine", None), (5, "euclidean", ["h"])],
)
def test_matches_brute_force_exactly(k: int, distance: str, layers: list[str] | None) -> None:
    model = tiny_model()
    x_tr, y_tr = make_data(1, 80)
    x_cal, y_cal = make_data(2, 40)
    x_te, _ = make_data(3, 50)
    dknn = DkNN(model, k=k, distance=distance, layers=layers, batch_size=16)
    out = dknn.fit(torch.from_numpy(x_tr), torch.from_numpy(y_tr)).calibrate(x_cal, y_cal).predict(x_te)

    names = layers or ["flat", "h", "logits"]
    sub = lambda F: {n: F[n] for n in names}  # noqa: E731
    a, p, pred, cred, conf = brute_force_dknn(
        sub(numpy_features(model, x_tr)),
        y_tr,
        sub(numpy_features(model, x_cal)),
        y_cal,
        sub(numpy_features(model, x_te)),
        k=k,
        distance=distance,
        min_gap=1e-6,
    )
    np.testing.assert_array_equal(out.nonconformity, a)
    np.testing.assert_array_equal(out.p_values, p)
    np.testing.assert_array_equal(out.prediction, pred)
    np.testing.assert_array_equal(out.credibility, cred)
    np.testing.assert_array_equal(out.confidence, conf)
    assert out.prediction.dtype == np.int64 and out.p_values.dtype == np.float64
    # the p-values tie often (integer nonconformities): the tests above cover the tie-breaking too
    assert len(np.unique(out.credibility)) > 3


def test_chunking_and_neighbour_labels_are_consistent() -> None:
    model = tiny_model()
    x_tr, y_tr = make_data(1, 80)
    x_cal, y_cal = make_data(2, 40)
    x_te, _ = make_data(3, 50)
    big = DkNN(model, k=7, batch_size=1000).fit(x_tr, y_tr).calibrate(x_cal, y_cal)
    small = DkNN(model, k=7, batch_size=3).fit(x_tr, y_tr).calibrate(x_cal, y_cal)
    a, b = big.predict(x_te, return_neighbors=True), small.predict(x_te)
    for field in ("prediction", "credibility", "confidence", "p_values", "nonconformity"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert b.knn_labels is None and a.knn_labels is not None
    assert set(a.knn_labels) == {"flat", "h", "logits"}
    votes = sum((labels[:, :, None] == np.arange(C)).sum(1) for labels in a.knn_labels.values())
    np.testing.assert_array_equal(a.nonconformity, 3 * 7 - votes)
    np.testing.assert_array_equal(big.calibration_scores, np.sort(big.calibration_scores))
    assert len(a) == 50 and 0.0 <= a.accuracy(np.zeros(50, dtype=np.int64)) <= 1.0
    assert repr(big) == (
        "DkNN(layers=['flat', 'h', 'logits'], k=7, index='exact', distance='euclidean', reduce_dim=None)"
    )


def test_model_mode_is_restored() -> None:
    model = tiny_model().train()
    x_tr, y_tr = make_data(1, 30)
    DkNN(model, k=3).fit(x_tr, y_tr)
    assert model.training


def test_rejects_bad_arguments() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="expected layers among"):
        DkNN(model, layers=["nope"])
    with pytest.raises(TypeError, match="sequence of layer names"):
        DkNN(model, layers="h")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected k an integer >= 1"):
        DkNN(model, k=0)
    with pytest.raises(ValueError, match="expected index"):
        DkNN(model, index="annoy")  # type: ignore[arg-type]
    x, y = make_data(1, 10)
    with pytest.raises(ValueError, match="only 10 training points"):
        DkNN(model, k=11).fit(x, y)
    with pytest.raises(ValueError, match=r"y_train in \[0, 3\)"):
        DkNN(model, k=2).fit(x, y + 5)
    dknn = DkNN(model, k=2)
    with pytest.raises(RuntimeError, match="call fit"):
        dknn.predict(x)
    with pytest.raises(RuntimeError, match="calibrate"):
        dknn.fit(x, y).predict(x)


def _fitted(tmp_path, **kw) -> tuple[DkNN, np.ndarray]:
    model = tiny_model()
    x_tr, y_tr = make_data(1, 80)
    x_cal, y_cal = make_data(2, 40)
    x_te, _ = make_data(3, 30)
    return DkNN(model, k=7, **kw).fit(x_tr, y_tr).calibrate(x_cal, y_cal), x_te


@pytest.mark.parametrize("kw", [{}, {"index": "hnsw", "distance": "cosine"}, {"index": "ivf", "reduce_dim": 4}])
def test_save_load_round_trip(tmp_path, kw) -> None:
    dknn, x_te = _fitted(tmp_path, **kw)
    before = dknn.predict(x_te)
    dknn.save(tmp_path / "idx")
    loaded = DkNN.load(tmp_path / "idx", dknn.model)
    after = loaded.predict(x_te)
    assert repr(loaded) == repr(dknn)
    assert loaded.index_specs == dknn.index_specs
    np.testing.assert_array_equal(loaded.calibration_scores, dknn.calibration_scores)
    for field in ("prediction", "credibility", "confidence", "p_values", "nonconformity"):
        np.testing.assert_array_equal(getattr(before, field), getattr(after, field))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        dknn.save(tmp_path / "idx")
    dknn.save(tmp_path / "idx", overwrite=True)
    assert not list((tmp_path / "idx").glob("*.pkl"))


@pytest.mark.parametrize("target", ["index_1.faiss", "arrays.npz", "dknn.json"])
def test_corruption_is_detected(tmp_path, target: str) -> None:
    dknn, _ = _fitted(tmp_path)
    path = dknn.save(tmp_path / "idx")
    f = path / target
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CacheError):
        DkNN.load(path, dknn.model)


def test_missing_file_and_other_weights_are_detected(tmp_path) -> None:
    dknn, _ = _fitted(tmp_path)
    path = dknn.save(tmp_path / "idx")
    with pytest.raises(CacheError, match="other model weights"):
        DkNN.load(path, tiny_model(seed=1))
    (path / "index_0.faiss").unlink()
    with pytest.raises(CacheError, match="missing"):
        DkNN.load(path, dknn.model)
    with pytest.raises(CacheError, match="no saved DkNN"):
        DkNN.load(tmp_path / "nothing", dknn.model)


# -- pickle payloads and damage in a saved DkNN folder (every checksum updated for the payloads) ---------


def _saved_dknn(tmp_path: Path, tiny_mlp: Callable[[], nn.Module]) -> tuple[nn.Module, Path]:
    model = tiny_mlp().eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 1, 4, 4, generator=g), torch.arange(40) % 3
    dknn = DkNN(model, k=3).fit(x, y).calibrate(x[:12], y[:12])
    return model, dknn.save(tmp_path / "dknn")


def _refresh_dknn_manifest(folder: Path) -> None:
    manifest = json.loads((folder / "dknn.json").read_text())
    manifest["files"] = {name: sha256_file(folder / name) for name in manifest["files"]}
    (folder / "dknn.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("target", ["arrays.npz", "index_0.faiss"])
def test_pickle_in_a_dknn_folder_is_refused_unexecuted(tmp_path, target, tiny_mlp, pickle_payload):
    marker = tmp_path / "executed"
    model, folder = _saved_dknn(tmp_path, tiny_mlp)
    DkNN.load(folder, model)  # intact: loads
    if target == "arrays.npz":  # an object array: np.load would unpickle it with allow_pickle=True
        buf = io.BytesIO()
        np.savez(buf, y_train=np.array([pickle_payload(marker)], dtype=object))
        (folder / target).write_bytes(buf.getvalue())
    else:
        (folder / target).write_bytes(pickle.dumps(pickle_payload(marker)))
    _refresh_dknn_manifest(folder)
    with pytest.raises(CacheError, match=f"could not read the DkNN in {re.escape(str(folder))}"):
        DkNN.load(folder, model)
    assert not marker.exists()


@pytest.mark.parametrize("how", ["truncate", "flip-middle"])
def test_damaged_dknn_file_is_refused_by_checksum(tmp_path, how, tiny_mlp, damage_file):
    model, folder = _saved_dknn(tmp_path, tiny_mlp)
    damage_file(folder / "index_0.faiss", how)
    with pytest.raises(CacheError, match="is corrupt: sha256"):
        DkNN.load(folder, model)


def test_approximate_indices_report_recall() -> None:
    model = tiny_model()
    x_tr, y_tr = make_data(1, 400)
    x_q, _ = make_data(3, 60)
    exact = DkNN(model, k=10).fit(x_tr, y_tr)
    assert exact.recall_at_k(x_tr, x_q) == {"flat": 1.0, "h": 1.0, "logits": 1.0}
    # IVF visiting every cell is exhaustive: recall 1
    full = DkNN(model, k=10, index="ivf", nlist=4, nprobe=4).fit(x_tr, y_tr)
    assert full.recall_at_k(x_tr, x_q) == pytest.approx({"flat": 1.0, "h": 1.0, "logits": 1.0})
    hnsw = DkNN(model, k=10, index="hnsw").fit(x_tr, y_tr).recall_at_k(x_tr, x_q)
    assert all(r > 0.9 for r in hnsw.values()), hnsw
    pca = DkNN(model, k=10, reduce_dim=3)
    recall = pca.fit(x_tr, y_tr).recall_at_k(x_tr, x_q, k=5)
    assert pca.index_specs == {"flat": "PCA3,Flat", "h": "PCA3,Flat", "logits": "Flat"}
    assert recall["logits"] == 1.0 and all(0.0 < r < 1.0 for r in (recall["flat"], recall["h"])), recall
    assert pca.recall == recall


def test_digits_model_dknn_is_accurate_and_doubts_noise(digits_model, digits_splits) -> None:
    s = digits_splits
    dknn = DkNN(digits_model, k=75).fit(s.train.x, s.train.y).calibrate(s.calibration.x, s.calibration.y)
    assert dknn.layers == ("conv1", "conv2", "fc1", "logits")
    clean = dknn.predict(s.test.x)
    assert isinstance(clean, DkNNOutput)
    assert clean.accuracy(s.test.y) > 0.85
    noise = dknn.predict(torch.rand(200, *s.input_shape, generator=torch.Generator().manual_seed(0)))
    assert noise.credibility.mean() < clean.credibility.mean()
    assert detection_scores(clean.credibility, noise.credibility)["auroc"] > 0.8
    assert set(dknn.last_timings) == {"features_s", "search_s"}


#: sha256 of the arrays of the case below, recorded with the code before per-layer votes were added
#: (commit 872ef96): the new fields must not change the existing ones by a single bit.
RECORDED = {
    "credibility": "30b379a5d7ca94b183c57faeb9f8b848f0b9348de076a583082b6dc5260b163d",
    "confidence": "56a2f8a6c56ffca14cb87e2f072ee06bcb124e0ad3e0e32eee5ae1b1d52425a9",
    "p_values": "73964ab08738104a79834f1483dd01d00df9068fad67c875cbb3ce4897e76486",
    "prediction": "19bf2f20398d09102ce338cd56db9a2ce57590635029e61797a619df9b04a71e",
    "nonconformity": "9f506b0258f95687855ffaa4ed48e669f493002c042a797b3802f456ac963b33",
}


def _recorded_case() -> tuple[DkNNOutput, np.ndarray]:
    x_tr, y_tr = make_data(1, 80)
    x_cal, y_cal = make_data(2, 40)
    x_te, y_te = make_data(3, 50)
    dknn = DkNN(tiny_model(), k=7, batch_size=16).fit(torch.from_numpy(x_tr), torch.from_numpy(y_tr))
    return dknn.calibrate(x_cal, y_cal).predict(x_te, return_neighbors=True), y_te


def test_existing_fields_are_bit_identical_to_the_recorded_case() -> None:
    import hashlib

    out, _ = _recorded_case()
    for field, digest in RECORDED.items():
        got = hashlib.sha256(np.ascontiguousarray(getattr(out, field)).tobytes()).hexdigest()
        assert got == digest, field
    assert out.credibility[:4].tolist() == [0.575, 0.85, 0.575, 0.5]


def test_layer_votes_and_neighbour_counts() -> None:
    out, y = _recorded_case()
    assert out.k == 7 and out.layer_votes is not None and out.knn_labels is not None
    assert list(out.layer_votes) == ["flat", "h", "logits"]
    for name, labels in out.knn_labels.items():
        np.testing.assert_array_equal(out.layer_votes[name], (labels[:, :, None] == np.arange(C)).sum(1))
    np.testing.assert_array_equal(out.nonconformity, 3 * 7 - sum(out.layer_votes.values()))
    true_counts = out.neighbour_counts(y)
    for name, labels in out.knn_labels.items():
        np.testing.assert_array_equal(true_counts[name], (labels == y[:, None]).sum(1))
    np.testing.assert_array_equal(out.p_value_of(out.prediction), out.credibility)
    with pytest.raises(ValueError, match="one per input"):
        out.p_value_of(y[:3])


def test_example_records_columns_and_values() -> None:
    out, y = _recorded_case()
    rng = np.random.default_rng(0)
    prob = rng.dirichlet(np.ones(C), size=len(y))
    ids = np.arange(100, 150)
    clean_correct = rng.random(len(y)) < 0.7
    df = example_records(out, labels=y, example_ids=ids, softmax=prob, clean_correct=clean_correct)
    layers = ["flat", "h", "logits"]
    expected_cols = (
        ["example", "label", "prediction", "correct", "credibility", "confidence", "p_true", "p_pred"]
        + [f"p_{j}" for j in range(C)]
        + ["k"]
        + [f"nbr_{w}/{n}" for n in layers for w in ("pred", "softmax_pred", "true")]
        + ["msp", "softmax_pred", "softmax_correct", "fooled"]
    )
    assert sorted(df.columns) == sorted(expected_cols)
    np.testing.assert_array_equal(df["example"], ids)
    np.testing.assert_array_equal(df["credibility"], out.credibility)
    np.testing.assert_array_equal(df["p_true"], out.p_values[np.arange(len(y)), y])
    np.testing.assert_array_equal(df["p_pred"], out.credibility)
    np.testing.assert_array_equal(df[[f"p_{j}" for j in range(C)]].to_numpy(), out.p_values)
    assert out.knn_labels is not None
    for n in layers:
        labels = out.knn_labels[n]
        np.testing.assert_array_equal(df[f"nbr_true/{n}"], (labels == y[:, None]).sum(1))
        np.testing.assert_array_equal(df[f"nbr_pred/{n}"], (labels == out.prediction[:, None]).sum(1))
        soft = prob.argmax(1)
        np.testing.assert_array_equal(df[f"nbr_softmax_pred/{n}"], (labels == soft[:, None]).sum(1))
    np.testing.assert_allclose(df["msp"], prob.max(1))
    np.testing.assert_array_equal(df["softmax_correct"], prob.argmax(1) == y)
    np.testing.assert_array_equal(df["fooled"], clean_correct & (prob.argmax(1) != y))
    assert (df["k"] == 7).all()
    ood = example_records(out, labels=None, example_ids=ids, softmax=prob)
    assert ood["label"].isna().all() and ood["p_true"].isna().all() and ood["nbr_true/h"].isna().all()
    assert "fooled" not in ood
    with pytest.raises(ValueError, match="summing to 1"):
        example_records(out, labels=y, example_ids=ids, softmax=np.log(prob))
    maha = -rng.random(len(y))
    with_maha = example_records(out, labels=y, example_ids=ids, softmax=prob, mahalanobis=maha)
    np.testing.assert_array_equal(with_maha["mahalanobis"], maha)
    assert "mahalanobis" not in df
    with pytest.raises(ValueError, match="finite Mahalanobis scores"):
        example_records(out, labels=y, example_ids=ids, softmax=prob, mahalanobis=maha[:3])
