"""The per-example worst case over all attacks: robust accuracy under the attack ensemble.

As AutoAttack reports it (Croce & Hein 2020): an example counts as robust at ``eps`` only if *every*
attack at that eps leaves it correctly classified (and, by default, it was correct when clean). This
is computed for each defended quantity separately:

* ``"classifier"``: the model's own prediction, from the outcomes table of
  :func:`advbench.evaluation.transfer.outcomes_for` (columns ``seed, source, attack, eps, target,
  example, clean_correct, adv_correct``);
* ``"dknn"``: the DkNN's prediction, from the per-example DkNN table (columns ``model, seed,
  input_set, example, correct, credibility`` and either ``source, attack, eps`` columns or an
  ``input_set`` of the form ``"<attack>@<eps> from <source>"``; the ``"clean"`` set gives the clean
  correctness).

White-box rows only (``source == target``) by default; ``include_transfer=True`` adds the examples
crafted on other sources and transferred into the target (a stronger, still valid, ensemble).

For the DkNN, among the attacks that fool an example the worst case is the one whose wrong label the
DkNN finds most credible; among attacks that do not, the one with the lowest credibility (the same
order as :func:`advbench.attacks.dknn_adaptive.dknn_badness`); its credibility is reported.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

__all__ = ["WORST_CASE_COLUMNS", "dknn_long", "outcomes_long", "worst_case", "worst_case_examples"]

#: Columns of :func:`worst_case`.
WORST_CASE_COLUMNS: tuple[str, ...] = (
    "quantity",
    "model",
    "seed",
    "eps",
    "n",
    "n_attacks",
    "attacks",
    "robust_accuracy",
    "strongest_attack",
    "strongest_accuracy",
    "ensemble_gain",
    "decisive_attacks",
    "mean_credibility",
)

_KEYS = ["quantity", "model", "seed", "eps"]
_SET = re.compile(r"^(?P<attack>.+)@(?P<eps>[^ ]+) from (?P<source>.+)$")


def _require(df: pd.DataFrame, need: set[str], what: str) -> None:
    missing = sorted(need - set(df.columns))
    if missing:
        raise ValueError(f"{what} lacks columns {missing} (has {sorted(df.columns)})")


def outcomes_long(outcomes: pd.DataFrame) -> pd.DataFrame:
    """The classifier's per-example rows in the common long form (``quantity == "classifier"``)."""
    _require(
        outcomes,
        {"seed", "source", "attack", "eps", "target", "example", "clean_correct", "adv_correct"},
        "the outcomes table",
    )
    return pd.DataFrame(
        {
            "quantity": "classifier",
            "model": outcomes["target"].astype(str),
            "seed": outcomes["seed"].astype(int),
            "eps": outcomes["eps"].astype(float),
            "source": outcomes["source"].astype(str),
            "attack": outcomes["attack"].astype(str),
            "example": outcomes["example"].astype(int),
            "clean_correct": outcomes["clean_correct"].astype(bool),
            "correct": outcomes["adv_correct"].astype(bool),
            "credibility": np.nan,
        }
    )


def dknn_long(dknn_examples: pd.DataFrame) -> pd.DataFrame:
    """The DkNN's per-example rows of the adversarial sets in the common long form (``quantity == "dknn"``).

    The clean correctness of each example comes from the ``"clean"`` input set of the same model and seed.
    """
    _require(dknn_examples, {"model", "seed", "input_set", "example", "correct", "credibility"}, "dknn_examples")
    df = dknn_examples
    clean = df[df["input_set"] == "clean"].set_index(["model", "seed", "example"])["correct"]
    if clean.index.has_duplicates:
        raise ValueError("dknn_examples has more than one clean row for some (model, seed, example)")
    adv = df[df["kind"] == "adversarial"] if "kind" in df.columns else df[df["input_set"] != "clean"]
    adv = adv[adv["input_set"].isin(["ood"]) == False].copy()  # noqa: E712  (a boolean Series)
    if not {"source", "attack", "eps"} <= set(adv.columns) or adv[["source", "attack", "eps"]].isna().any().any():
        parsed = adv["input_set"].str.extract(_SET)
        bad = parsed["attack"].isna()
        if bad.any():
            raise ValueError(
                f"input_set {adv['input_set'][bad].iloc[0]!r} names no attack; expected '<attack>@<eps> from <source>' "
                f"or source/attack/eps columns"
            )
        adv["source"], adv["attack"], adv["eps"] = parsed["source"], parsed["attack"], parsed["eps"].astype(float)
    idx = pd.MultiIndex.from_arrays([adv["model"], adv["seed"], adv["example"]])
    clean_correct = clean.reindex(idx)
    if clean_correct.isna().any():
        raise ValueError("some adversarial DkNN rows have no clean row for the same (model, seed, example)")
    return pd.DataFrame(
        {
            "quantity": "dknn",
            "model": adv["model"].astype(str).to_numpy(),
            "seed": adv["seed"].astype(int).to_numpy(),
            "eps": adv["eps"].astype(float).to_numpy(),
            "source": adv["source"].astype(str).to_numpy(),
            "attack": adv["attack"].astype(str).to_numpy(),
            "example": adv["example"].astype(int).to_numpy(),
            "clean_correct": clean_correct.astype(bool).to_numpy(),
            "correct": adv["correct"].astype(bool).to_numpy(),
            "credibility": adv["credibility"].astype(float).to_numpy(),
        }
    )


def _label(row_source: pd.Series, row_model: pd.Series, attack: pd.Series) -> pd.Series:
    """White-box rows are named by their attack, transferred ones ``"<attack> from <source>"``."""
    return attack.where(row_source == row_model, attack + " from " + row_source)


def worst_case_examples(
    long: pd.DataFrame, *, include_transfer: bool = False, include_clean: bool = True
) -> pd.DataFrame:
    """Per (quantity, model, seed, eps, example): whether it survives every attack, and what broke it.

    ``long`` is :func:`outcomes_long` and/or :func:`dknn_long` (concatenated). Columns: the keys,
    ``example``, ``robust`` (correct under every attack, and clean when ``include_clean``),
    ``broken_by`` (the ``";"``-joined attacks that fooled it), ``worst_attack`` (the attack the worst case
    came from) and ``credibility`` (the DkNN's credibility of that worst candidate; NaN for the classifier).
    """
    df = long if include_transfer else long[long["source"] == long["model"]]
    if df.empty:
        return pd.DataFrame(columns=[*_KEYS, "example", "robust", "broken_by", "worst_attack", "credibility"])
    df = df.assign(label=_label(df["source"], df["model"], df["attack"]))
    dup = df.duplicated([*_KEYS, "label", "example"])
    if dup.any():
        r = df[dup].iloc[0]
        raise ValueError(f"more than one row for {r['label']} on example {r['example']} ({r['model']}, eps={r['eps']})")
    # the defender's worst candidate first: wrong before correct, then by credibility (high if wrong, low if right)
    cred = df["credibility"].fillna(0.0)
    df = df.assign(_bad=np.where(df["correct"], 1.0 - cred, 2.0 + cred))
    df = df.sort_values([*_KEYS, "example", "_bad", "label"], ascending=[True] * 5 + [False, True], kind="stable")
    g = df.groupby([*_KEYS, "example"], sort=True)
    worst = g.head(1).set_index([*_KEYS, "example"])
    out = pd.DataFrame(
        {
            "robust": g["correct"].all() & (g["clean_correct"].all() if include_clean else True),
            "broken_by": _broken_by(df, worst.index),
            "worst_attack": worst["label"],
            "credibility": worst["credibility"],
        }
    )
    return out.reset_index()


def _broken_by(df: pd.DataFrame, index: pd.Index) -> pd.Series:
    """Per example of ``index``: the sorted, ``";"``-joined labels of the attacks that fooled it ("" if none).

    Built column by column over the (few) attack labels rather than with a Python join per example,
    which would take most of a cached re-run's time on a powered suite (10^5 examples).
    """
    broke = df.loc[~df["correct"].astype(bool), [*_KEYS, "example", "label"]]
    joined = pd.Series("", index=index, dtype=object)
    if broke.empty:
        return joined
    wide = broke.assign(_v=True).set_index([*_KEYS, "example", "label"])["_v"].unstack("label", fill_value=False)
    wide = wide.reindex(index, fill_value=False)
    text = np.full(len(index), "", dtype=object)
    for label in sorted(wide.columns):
        hit = wide[label].to_numpy(dtype=bool)
        text[hit] = text[hit] + np.where(text[hit] == "", "", ";") + label
    return pd.Series(text, index=index, dtype=object)


def worst_case(long: pd.DataFrame, *, include_transfer: bool = False, include_clean: bool = True) -> pd.DataFrame:
    """Robust accuracy under the ensemble of every attack, per (quantity, model, seed, eps).

    Columns :data:`WORST_CASE_COLUMNS`: ``n`` examples, ``n_attacks`` and ``attacks`` in the ensemble,
    ``robust_accuracy`` (fraction robust to all), ``strongest_attack``/``strongest_accuracy`` (the best
    single attack and its accuracy, clean-wrong examples counted as not robust like the ensemble),
    ``ensemble_gain`` (``strongest_accuracy - robust_accuracy`` >= 0), ``decisive_attacks`` (attacks that
    alone broke some example, with how many) and ``mean_credibility`` (DkNN: mean credibility of the
    worst-case candidates; NaN for the classifier).
    """
    df = long if include_transfer else long[long["source"] == long["model"]]
    if df.empty:
        return pd.DataFrame(columns=list(WORST_CASE_COLUMNS))
    df = df.assign(label=_label(df["source"], df["model"], df["attack"]))
    per = worst_case_examples(long, include_transfer=include_transfer, include_clean=include_clean)
    ok = df["correct"] & df["clean_correct"] if include_clean else df["correct"]
    single = df.assign(ok=ok).groupby([*_KEYS, "label"], sort=True)["ok"].mean().reset_index()
    rows = []
    for key, ex in per.groupby(_KEYS, sort=True):
        s = single[(single[_KEYS] == pd.Series(key, index=_KEYS)).all(axis=1)].sort_values(
            ["ok", "label"], kind="stable"
        )
        alone = ex.loc[(ex["broken_by"] != "") & ~ex["broken_by"].str.contains(";"), "broken_by"].value_counts()
        rows.append(
            {
                **dict(zip(_KEYS, key, strict=True)),
                "n": len(ex),
                "n_attacks": len(s),
                "attacks": ";".join(sorted(s["label"])),
                "robust_accuracy": float(ex["robust"].mean()),
                "strongest_attack": s["label"].iloc[0],
                "strongest_accuracy": float(s["ok"].iloc[0]),
                "ensemble_gain": float(s["ok"].iloc[0] - ex["robust"].mean()),
                "decisive_attacks": ";".join(f"{a}:{n}" for a, n in sorted(alone.items())),
                "mean_credibility": float(ex["credibility"].mean()) if key[0] == "dknn" else float("nan"),
            }
        )
    return pd.DataFrame(rows, columns=list(WORST_CASE_COLUMNS))
