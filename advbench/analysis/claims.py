"""Pre-registered claims with verdicts decided by seed-level inference.

A :class:`Claim` is a named hypothesis fixed before the run: a statement, the metric it reads, the
claimed direction, and a *statistic*, a function of the tidy results returning one value per seed
(the trained network is the unit). The decision rule is the same code for every claim
(:func:`decide`), applied to the Student-t interval of the per-seed values (``n − 1`` df):

* **supported** when the interval excludes 0 in the claimed direction;
* **contradicted** when it excludes 0 in the other direction;
* **inconclusive** otherwise, with the seeds needed to resolve it (80% power, α = 0.05, from the
  observed between-seed SD, for the claim's smallest effect of interest or else the observed one);
* **not applicable** when the run lacks the data (the reason says what is missing).

A claim that must hold in several places at once ("in every layer", "for both models and more so for
one") is *composite*: its statistic returns each component's per-seed values
(:attr:`Evidence.components`) and each component is tested by itself (:func:`decide_components`). The
claim is **supported** only when every component's interval excludes 0 in the claimed direction (an
intersection–union test, valid at the components' own level), **contradicted** only when a component
excludes 0 in the other direction after Holm's correction across the components, and inconclusive
otherwise. (Deciding on the per-seed minimum of the components instead would make a false contradiction
out of components that all have no effect: 37% of the time with two, 79% with three.)

The claims a suite pre-registers are one family: their p-values are Holm-adjusted together
(:func:`adjust_family`, column ``p_adjusted``) and the verdicts use the adjusted values, so the chance
of any false verdict among them stays at most 5%. Each claim has a **kind**: a *manipulation check*
(did the training do what it was meant to), a *description* (of the baseline) or a *finding* (what the
paper claims about the manipulation); the headline counts findings.

Claims register like attacks: ``@register_claim("name", statement=..., metric=..., direction=...)``
on the statistic function (user code), or through the ``advbench.claims`` entry-point group (installed
packages; advbench's built-ins below are declared there too). A claim reads the results through the
small :class:`TidyResults` protocol, so this module does not depend on the reports layer.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol, cast

import numpy as np
import pandas as pd

from advbench.analysis import inference as _inf
from advbench.registry import Registry

__all__ = [
    "CLAIMS",
    "CLAIM_COLUMNS",
    "CLAIM_KINDS",
    "COMPONENT_COLUMNS",
    "OOD_DETECTORS",
    "Claim",
    "ClaimKind",
    "ClaimResult",
    "ComponentResult",
    "Decision",
    "Evidence",
    "NotApplicableError",
    "TidyResults",
    "adjust_family",
    "baseline_model",
    "claim_components",
    "claims_scope",
    "claims_table",
    "claims_tally",
    "decide",
    "decide_components",
    "disjoint_pairs",
    "evaluate_claims",
    "holm",
    "model_roles",
    "ood_auroc_gain",
    "register_claim",
    "register_ood_auroc_claim",
    "register_transfer_into_claim",
    "regularised_model",
    "transfer_into_gain",
]

Direction = Literal["greater", "less"]
log = logging.getLogger(__name__)

Verdict = Literal["supported", "contradicted", "inconclusive", "not applicable", "error"]
ClaimKind = Literal["manipulation check", "description", "finding"]
#: What a claim is for: a manipulation check (did the training do what it was meant to), a description (of
#: the baseline), a finding (what the paper claims about the manipulation; the headline counts these).
CLAIM_KINDS: tuple[str, ...] = ("manipulation check", "description", "finding")


class TidyResults(Protocol):
    """What a claim reads: the run's suite (a dict) and its tidy tables (``advbench.reports.results.Results``
    satisfies it)."""

    suite: dict[str, Any]
    training: pd.DataFrame
    clean: pd.DataFrame
    dknn: pd.DataFrame
    dknn_examples: pd.DataFrame
    metrics: pd.DataFrame

    def example_summary(self, name: str) -> pd.DataFrame:
        """A per-seed summary of ``dknn_examples`` (:mod:`advbench.analysis.example_summary`)."""


class NotApplicableError(Exception):
    """Raised by a claim's statistic when the run lacks what it needs; the message is the reason."""


@dataclass(frozen=True)
class Evidence:
    """What a statistic returns: one value per seed (index = seed) or, for a composite claim, each
    component's per-seed values (``components``, name -> Series; ``per_seed`` is then their per-seed
    minimum, shown for reference only). Optionally the metric actually read (when it chose among
    alternatives) and a note for the reader."""

    per_seed: pd.Series
    metric: str | None = None
    note: str = ""
    components: Mapping[str, pd.Series] | None = None


Statistic = Callable[[TidyResults], "Evidence | pd.Series"]


@dataclass(frozen=True)
class ComponentResult:
    """One component of a claim: its seed-level interval, p-values and its own verdict.

    ``p``: the paired t-test's two-sided p; ``p_holm``: Holm-adjusted across the claim's components (what
    a contradiction needs); ``verdict``: ``supported`` when the interval excludes 0 in the claimed direction,
    ``contradicted`` when ``p_holm`` is below the level and the estimate is on the other side, else
    ``inconclusive``.
    """

    name: str
    seeds: tuple[int, ...]
    per_seed: tuple[float, ...]
    estimate: float
    ci_low: float
    ci_high: float
    p: float
    p_holm: float
    verdict: Verdict


@dataclass(frozen=True)
class Decision:
    """How a claim's components decide it, before the correction across the suite's claims.

    ``p_support``: the intersection–union p of "every component in the claimed direction" (the largest
    component p; 1 when a component lies on the other side); ``p_contradict``: the smallest Holm-adjusted p
    of a component on the other side (1 when none is). ``binding``: the index of the component the claim's
    estimate and interval show (the weakest support, or the strongest contradiction).
    """

    components: tuple[ComponentResult, ...]
    p_support: float
    p_contradict: float
    binding: int

    @property
    def p(self) -> float:
        """The claim's p-value: the smaller of the two (each side holds half the level under the null)."""
        return min(self.p_support, self.p_contradict)

    @property
    def side(self) -> Literal["support", "contradict"]:
        return "support" if self.p_support <= self.p_contradict else "contradict"


@dataclass(frozen=True)
class ClaimResult:
    """The verdict of one claim on one run (NaN / None where not computed)."""

    name: str
    kind: ClaimKind
    statement: str
    metric: str
    direction: Direction
    seeds: tuple[int, ...]
    per_seed: tuple[float, ...]  # the binding component's (see Decision)
    estimate: float
    ci_low: float
    ci_high: float
    p: float  # min(p_support, p_contradict): the claim's own p before the correction across claims
    p_signflip: float
    p_support: float
    p_contradict: float
    p_adjusted: float  # Holm across the suite's claims; the verdict uses it
    verdict: Verdict
    seeds_needed: int | None
    reason: str
    note: str = ""  # the statistic's note for the reader
    decided_by: str = ""  # a composite claim's binding component (its estimate and interval are the row's)
    components: tuple[ComponentResult, ...] = ()

    def as_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["seeds"] = list(self.seeds)
        row["per_seed"] = [round(v, 6) for v in self.per_seed]
        row["components"] = json.dumps([_component_row(c) for c in self.components]) if len(self.components) > 1 else ""
        return row


def _component_row(c: ComponentResult) -> dict[str, Any]:
    row = asdict(c)
    row["seeds"] = list(c.seeds)
    row["per_seed"] = [round(v, 6) for v in c.per_seed]
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


#: Columns of :func:`claims_table` (``components``: a composite claim's components as a JSON list).
CLAIM_COLUMNS: tuple[str, ...] = tuple(f.name for f in ClaimResult.__dataclass_fields__.values())
#: Columns of :func:`claim_components`: one row per component of every claim.
COMPONENT_COLUMNS: tuple[str, ...] = ("claim", *(f for f in ComponentResult.__dataclass_fields__ if f != "per_seed"))


def decide(
    per_seed: Sequence[float] | np.ndarray,
    direction: Direction,
    *,
    confidence: float = 0.95,
    smallest_effect: float | None = None,
) -> tuple[_inf.PairedT, Verdict, int | None, str]:
    """The rule for one series of per-seed values, alone: ``(t result, verdict, seeds needed, reason)``.

    A claim's verdict is this rule per component (:func:`decide_components`) with the corrections across
    components and across the suite's claims (:func:`adjust_family`).
    """
    if direction not in ("greater", "less"):
        raise ValueError(f"direction must be 'greater' or 'less', got {direction!r}")
    t = _inf.paired_t(per_seed, confidence=confidence)
    if t.n < 2:
        return t, "inconclusive", None, f"{t.n} seed(s) with a value: a seed-level interval needs at least 2"
    above, below = t.low > 0, t.high < 0  # NaN bounds (never here with n >= 2) compare False
    level = f"{100 * confidence:g}% interval"
    if (above and direction == "greater") or (below and direction == "less"):
        return t, "supported", None, f"the {level} excludes 0 in the claimed direction"
    if above or below:
        return t, "contradicted", None, f"the {level} excludes 0 in the direction opposite to the claim"
    effect = smallest_effect if smallest_effect is not None else abs(t.estimate)
    needed = _inf.seeds_needed(t.sd, effect) if t.sd > 0 else None
    what = "the smallest effect of interest" if smallest_effect is not None else "the observed effect"
    more = f"; about {needed} seeds would detect {what} ({effect:.3g}) with 80% power" if needed else ""
    return t, "inconclusive", needed, f"the {level} contains 0{more}"


def holm(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values; NaN entries stay NaN and do not count.

    Written here (five lines) rather than taken from statsmodels' ``multipletests(method="holm")``, which
    gives the same numbers (the tests compare them) but runs ``gc.collect()`` on every call: 50 ms in a
    process holding a run's tables, and the rule simulations call it thousands of times.
    """
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    steps = (m - np.arange(m)) * p[order]  # the i-th smallest p times (m - i)
    out[order] = np.minimum(1.0, np.maximum.accumulate(steps))
    return out


def decide_components(
    components: Mapping[str, pd.Series], direction: Direction, *, confidence: float = 0.95
) -> Decision:
    """Test each component by itself and combine: intersection–union for support, Holm for contradiction."""
    if direction not in ("greater", "less"):
        raise ValueError(f"direction must be 'greater' or 'less', got {direction!r}")
    alpha = 1 - confidence
    sign = 1.0 if direction == "greater" else -1.0
    tests = {n: _inf.paired_t(s.to_numpy(float), confidence=confidence) for n, s in components.items()}
    # a component with fewer than 2 seeds, or no spread, has no test: p 1 (it can neither support nor contradict)
    p = np.array([t.p if t.n >= 2 and math.isfinite(t.p) else 1.0 for t in tests.values()])
    claimed = np.array([sign * t.estimate > 0 for t in tests.values()])
    p_holm = holm(p)
    results = []
    for (name, s), t, pj, ph, ok in zip(components.items(), tests.values(), p, p_holm, claimed, strict=True):
        verdict: Verdict = (
            "supported" if ok and pj < alpha else "contradicted" if not ok and ph < alpha else "inconclusive"
        )
        results.append(
            ComponentResult(
                name=name,
                seeds=tuple(int(i) for i in s.index),
                per_seed=tuple(float(v) for v in s),
                estimate=t.estimate,
                ci_low=t.low,
                ci_high=t.high,
                p=float(pj),
                p_holm=float(ph),
                verdict=verdict,
            )
        )
    support = np.where(claimed, p, 1.0)
    contradict = np.where(~claimed, p_holm, 1.0)
    p_support, p_contradict = float(support.max()), float(contradict.min())
    # the binding component: the strongest contradiction, else the weakest support (the first of equals)
    binding = int(np.argmin(contradict)) if p_contradict < p_support else int(np.argmax(support))
    return Decision(tuple(results), p_support, p_contradict, binding)


def adjust_family(results: Sequence[ClaimResult], *, confidence: float = 0.95) -> list[ClaimResult]:
    """The suite's claims decided together: Holm across their p-values, verdicts on the adjusted values."""
    alpha = 1 - confidence
    decided = [i for i, r in enumerate(results) if r.verdict not in ("not applicable", "error")]
    adjusted = holm([results[i].p for i in decided])
    out = list(results)
    family = f"Holm across the suite's {len(decided)} claims" if len(decided) > 1 else "one claim: no correction"
    for i, p_adj in zip(decided, adjusted, strict=True):
        r = results[i]
        side = "support" if r.p_support <= r.p_contradict else "contradict"
        verdict: Verdict = "inconclusive" if not p_adj < alpha else "supported" if side == "support" else "contradicted"
        reason = _reason(r, verdict, float(p_adj), alpha, family)
        out[i] = replace(r, p_adjusted=float(p_adj), verdict=verdict, reason=reason)
    return out


def _reason(r: ClaimResult, verdict: Verdict, p_adj: float, alpha: float, family: str) -> str:
    level = f"{100 * (1 - alpha):g}% interval"
    composite = len(r.components) > 1
    binding = next((c for c in r.components if c.name == r.decided_by), None) if composite else None
    adj = f"adjusted p {p_adj:.2g} ({family})"
    if verdict == "supported":
        what = f"every component's {level}" if composite else f"the {level}"
        text = f"{what} excludes 0 in the claimed direction; {adj}"
    elif verdict == "contradicted":
        where = f"the {level} of component {binding.name!r}" if binding is not None else f"the {level}"
        across = f" (Holm across its {len(r.components)} components)" if composite else ""
        text = f"{where} excludes 0 in the direction opposite to the claim{across}; {adj}"
    elif min(r.p_support, r.p_contradict) < alpha:
        text = f"significant alone (p {r.p:.2g}), not after the correction: {adj}"
    else:
        where = f" for component {binding.name!r}" if binding is not None else ""
        text = f"the {level} contains 0{where}; {adj}"
        if r.seeds_needed:
            text += f"; about {r.seeds_needed} seeds would resolve it with 80% power (per comparison)"
    return f"{text}; {r.note}" if r.note else text


@dataclass(frozen=True)
class Claim:
    """A pre-registered hypothesis: ``statistic`` returns per-seed values whose sign, in ``direction``,
    is the claim (e.g. ``entangled − baseline`` with direction ``"greater"``); ``kind`` says what the
    claim is for (:data:`CLAIM_KINDS`)."""

    name: str
    statement: str
    metric: str
    direction: Direction
    statistic: Statistic = field(repr=False)
    smallest_effect: float | None = None
    kind: ClaimKind = "finding"

    @property
    def __wrapped__(self) -> Statistic:
        """The statistic: the code behind the claim, by which the registry credits it (advbench, a script or a
        plugin) and code identity hashes it (``inspect.unwrap`` convention)."""
        return self.statistic

    def evaluate(self, results: TidyResults, *, confidence: float = 0.95) -> ClaimResult:
        """The verdict on ``results`` alone (no correction across claims: :func:`evaluate_claims` adds it); a
        statistic raising :class:`NotApplicableError` gives ``"not applicable"``.

        A statistic is a guest (a plugin's code): one that raises, calls ``sys.exit`` or returns anything but
        per-seed numbers gets the verdict ``"error"`` with what went wrong, and the other claims and the
        report go on.
        """
        try:
            ev = self.statistic(results)
            if isinstance(ev, pd.Series):
                ev = Evidence(ev)
            if not isinstance(ev, Evidence) or not isinstance(ev.per_seed, pd.Series):
                raise TypeError(
                    f"returned {type(ev).__name__}; expected a pandas Series of per-seed values (indexed by seed) "
                    f"or an Evidence"
                )
            parts = dict(ev.components) if ev.components else {self.metric: ev.per_seed}
            comps = {
                str(n): pd.to_numeric(v, errors="raise").astype(float).dropna().sort_index() for n, v in parts.items()
            }
        except NotApplicableError as exc:
            return self._without_verdict("not applicable", f"not applicable: {exc}")
        except (Exception, SystemExit) as exc:
            what = f"called sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}"
            log.error("claim %s failed: %s; it is reported as 'error' and the other claims go on", self.name, what)
            return self._without_verdict("error", " ".join(f"error: its statistic {what}".split())[:300])
        d = decide_components(comps, self.direction, confidence=confidence)
        bind = d.components[d.binding]
        s = comps[bind.name]
        _, _, needed, _ = decide(s.to_numpy(float), self.direction, smallest_effect=self.smallest_effect)
        p_flip = _inf.signflip_p(s.to_numpy(float)) if 2 <= len(s) <= 20 else math.nan
        result = ClaimResult(
            name=self.name,
            kind=self.kind,
            statement=self.statement,
            metric=ev.metric or self.metric,
            direction=self.direction,
            seeds=bind.seeds,
            per_seed=bind.per_seed,
            estimate=bind.estimate,
            ci_low=bind.ci_low,
            ci_high=bind.ci_high,
            p=d.p,
            p_signflip=p_flip,
            p_support=d.p_support,
            p_contradict=d.p_contradict,
            p_adjusted=d.p,
            verdict="inconclusive",
            seeds_needed=needed,
            reason="",
            note=ev.note,
            decided_by=bind.name if len(d.components) > 1 else "",
            components=d.components,
        )
        return adjust_family([result], confidence=confidence)[0]

    def _without_verdict(self, verdict: Verdict, reason: str) -> ClaimResult:
        nan = math.nan
        return ClaimResult(
            self.name, self.kind, self.statement, self.metric, self.direction, (), (), nan, nan, nan, nan, nan, nan,
            nan, nan, verdict, None, reason,
        )  # fmt: skip


#: name -> Claim
CLAIMS: Registry[Claim] = Registry("claim", group="advbench.claims")


def register_claim(
    name: str,
    *,
    statement: str,
    metric: str,
    direction: Direction,
    smallest_effect: float | None = None,
    kind: ClaimKind = "finding",
    registry: Registry[Claim] | None = None,
) -> Callable[[Statistic], Claim]:
    """Decorator turning a statistic function into a registered :class:`Claim` (returned in its place)."""
    if kind not in CLAIM_KINDS:
        raise ValueError(f"claim {name!r}: kind {kind!r} is not one of {', '.join(CLAIM_KINDS)}")

    def deco(fn: Statistic) -> Claim:
        claim = Claim(name, statement, metric, direction, fn, smallest_effect, kind)
        (CLAIMS if registry is None else registry).add(name, claim)
        return claim

    return deco


def evaluate_claims(
    results: TidyResults,
    names: Sequence[str] | None = None,
    *,
    registry: Registry[Claim] | None = None,
    confidence: float = 0.95,
) -> list[ClaimResult]:
    """Every claim named in ``names`` evaluated on ``results`` and decided as one family (:func:`adjust_family`);
    ``None`` means every registered claim (in name order), an empty list none (a tuning suite decides nothing)."""
    reg = CLAIMS if registry is None else registry
    names = reg.list() if names is None else names
    return adjust_family([reg.get(n).evaluate(results, confidence=confidence) for n in names], confidence=confidence)


def claims_table(
    results: TidyResults, names: Sequence[str] | None = None, *, registry: Registry[Claim] | None = None
) -> pd.DataFrame:
    """:func:`evaluate_claims` as a tidy table with columns :data:`CLAIM_COLUMNS`."""
    rows = [r.as_row() for r in evaluate_claims(results, names, registry=registry)]
    return pd.DataFrame(rows, columns=list(CLAIM_COLUMNS))


def claim_components(claims: pd.DataFrame) -> pd.DataFrame:
    """One row per component of each claim in a :func:`claims_table` (a single-measure claim: one row named
    by its metric), columns :data:`COMPONENT_COLUMNS`."""
    rows: list[dict[str, Any]] = []
    for r in claims.to_dict("records"):
        comps = json.loads(r["components"]) if isinstance(r.get("components"), str) and r["components"] else []
        if not comps and r.get("verdict") not in ("not applicable", "error"):
            comps = [{"name": r["metric"], "seeds": r["seeds"], "estimate": r["estimate"], "ci_low": r["ci_low"],
                      "ci_high": r["ci_high"], "p": r["p"], "p_holm": r["p"], "verdict": r["verdict"]}]  # fmt: skip
        rows.extend({"claim": r["name"], **{k: c.get(k) for k in COMPONENT_COLUMNS if k != "claim"}} for c in comps)
    return pd.DataFrame(rows, columns=list(COMPONENT_COLUMNS))


def claims_tally(table: pd.DataFrame) -> str:
    """The verdicts of a claims table counted by kind, findings first (``"findings: 1 supported, 4 contradicted;
    manipulation check: 1 supported; ..."``)."""
    if table.empty:
        return "no claims"
    kinds = table["kind"] if "kind" in table.columns else pd.Series("finding", index=table.index)
    parts = []
    for kind in ("finding", "manipulation check", "description"):
        verdicts = table.loc[kinds == kind, "verdict"].value_counts()
        if verdicts.empty:
            continue
        label = "findings" if kind == "finding" else f"{kind}s" if verdicts.sum() > 1 else kind
        order = ("supported", "contradicted", "inconclusive", "not applicable", "error")
        parts.append(f"{label}: " + ", ".join(f"{int(verdicts[v])} {v}" for v in order if v in verdicts))
    return "; ".join(parts)


def _compact_seeds(seeds: Sequence[int]) -> str:
    s = sorted(int(x) for x in seeds)
    if s and s == list(range(s[0], s[-1] + 1)) and len(s) > 2:
        return f"{s[0]}–{s[-1]}"
    return ", ".join(map(str, s))


def claims_scope(suite: Mapping[str, Any]) -> str:
    """The setting a run's verdicts hold at: data, architectures, each model's dose and training budget,
    the attacks and the seeds (the sentence that opens every Claims table)."""
    d = suite.get("dataset") or {}
    splits = d.get("splits") or {}
    data = f"{d.get('name', '?')} (train {splits.get('train') or 'all'}, test {splits.get('test') or 'all'})"
    models = [m for m in suite.get("models") or [] if isinstance(m, dict)]
    archs = sorted({str(m.get("architecture") or m.get("builder") or "brought") for m in models})
    described = []
    for m in models:
        r = m.get("recipe")
        if not r:
            described.append(f"{m.get('name')} (brought weights)")
            continue
        sn = r.get("snnl") or {}
        alpha = float(sn.get("alpha") or 0.0)
        dose = f"SNNL α {alpha:+g}, {sn.get('temperature', 'fixed')} temperature" if alpha else "no SNNL"
        regs = [str(x.get("name")) for x in r.get("regularisers") or [] if isinstance(x, dict)]
        if regs:
            dose += "; " + ", ".join(regs)
        described.append(f"{m.get('name')} ({dose}; {r.get('epochs', '?')} epochs)")
    attacks = [
        f"{a.get('label') or a.get('name')} ε {'/'.join(f'{float(e):g}' for e in a.get('eps') or [])}"
        for a in suite.get("attacks") or []
        if isinstance(a, dict)
    ]
    seeds = suite.get("seeds") or []
    return (
        f"{data}; architecture {', '.join(archs) or '?'}; models {'; '.join(described) or 'none'}; attacks "
        f"{', '.join(attacks) or 'none'}; {len(seeds)} seeds ({_compact_seeds(seeds)}). Every verdict holds at "
        f'this setting only: *contradicted* reads "contradicted at this dose, training budget, dataset, '
        f'architecture and attack set".'
    )


# -- reading the results -------------------------------------------------------------------------


def model_roles(suite: dict[str, Any]) -> tuple[str, str]:
    """``(baseline, entangled)`` model names from the suite: the first model with SNNL ``alpha == 0``
    and the first with ``alpha < 0``. Raises :class:`NotApplicableError` when either is missing."""
    alphas: dict[str, float] = {}
    plain: set[str] = set()  # models with no regulariser besides the recipe's `snnl` block
    for m in suite.get("models") or []:
        recipe = (m.get("recipe") or {}) if isinstance(m, dict) else {}
        alphas[str(m.get("name"))] = float((recipe.get("snnl") or {}).get("alpha", 0.0) or 0.0)
        if not recipe.get("regularisers"):
            plain.add(str(m.get("name")))
    base = next((n for n, a in alphas.items() if a == 0 and n in plain), None)
    ent = next((n for n, a in alphas.items() if a < 0), None)
    if base is None or ent is None:
        raise NotApplicableError(
            f"the suite needs a baseline (SNNL alpha = 0, no other regulariser) and an entangled model (alpha < 0); "
            f"its models have alpha {alphas or 'none'}"
        )
    return base, ent


def baseline_model(suite: dict[str, Any]) -> str:
    """The first model trained with no regulariser at all (SNNL alpha 0, empty ``regularisers``)."""
    for m in suite.get("models") or []:
        recipe = (m.get("recipe") or {}) if isinstance(m, dict) else {}
        if not float((recipe.get("snnl") or {}).get("alpha", 0.0) or 0.0) and not recipe.get("regularisers"):
            return str(m.get("name"))
    raise NotApplicableError("the suite has no baseline: a model with SNNL alpha 0 and no `regularisers`")


def regularised_model(suite: dict[str, Any], regulariser: str) -> str:
    """The first model whose recipe lists ``regulariser`` (by registered name) among its ``regularisers``."""
    for m in suite.get("models") or []:
        regs = ((m.get("recipe") or {}).get("regularisers") or []) if isinstance(m, dict) else []
        if any(isinstance(r, dict) and r.get("name") == regulariser for r in regs):
            return str(m.get("name"))
    raise NotApplicableError(f"no model of the suite is trained with the {regulariser!r} regulariser")


def _layers_regularised(suite: dict[str, Any], model: str) -> list[str] | None:
    for m in suite.get("models") or []:
        if m.get("name") == model:
            return ((m.get("recipe") or {}).get("snnl") or {}).get("layers")
    return None


def _last_epoch_snnl(results: TidyResults) -> tuple[pd.DataFrame, list[str]]:
    tr = results.training
    cols = [c for c in tr.columns if c.startswith("entanglement/")]
    if tr.empty or not cols or not {"model", "seed", "epoch"} <= set(tr.columns):
        raise NotApplicableError("training.csv has no per-epoch `entanglement/<layer>` columns (the probe SNNL)")
    last = tr.loc[tr.groupby(["model", "seed"])["epoch"].idxmax()]
    return last.set_index(["model", "seed"])[cols], [c.split("/", 1)[1] for c in cols]


def _by_seed(table: pd.DataFrame, model: str, what: str) -> pd.DataFrame:
    try:
        return cast(pd.DataFrame, table.xs(model, level="model"))
    except KeyError:
        raise NotApplicableError(f"{what} has no rows for the model {model!r}") from None


def _paired(a: pd.Series, b: pd.Series, what: str) -> pd.DataFrame:
    """Align two per-seed series on the seeds both have."""
    both = pd.concat({"a": a, "b": b}, axis=1, join="inner").dropna()
    if both.empty:
        raise NotApplicableError(f"no seed has {what} for both models")
    return both


def _all_of(components: dict[str, pd.Series]) -> Evidence:
    """A composite claim's evidence: each component tested by itself (``per_seed``: their minimum, for reference)."""
    frame = pd.concat(components, axis=1, join="inner")
    return Evidence(frame.min(axis=1), components={k: frame[k] for k in frame.columns})


# -- built-in claims (a)-(g) ------------------------------------------------------------------------


@register_claim(
    "a-entangled-snnl-higher",
    statement="The entangled model's hidden-layer SNNL is higher than the baseline's in every regularised layer.",
    metric="probe SNNL after the last epoch, entangled − baseline, in each regularised layer",
    direction="greater",
    kind="manipulation check",
)
def _claim_a(results: TidyResults) -> Evidence:
    base, ent = model_roles(results.suite)
    snnl, layers = _last_epoch_snnl(results)
    wanted = _layers_regularised(results.suite, ent)
    use = [layer for layer in layers if wanted is None or layer in wanted]
    if not use:
        raise NotApplicableError(f"none of the regularised layers {wanted} has an entanglement column ({layers})")
    b, e = _by_seed(snnl, base, "training.csv"), _by_seed(snnl, ent, "training.csv")
    return _all_of({layer: (e[f"entanglement/{layer}"] - b[f"entanglement/{layer}"]).dropna() for layer in use})


@register_claim(
    "b-baseline-snnl-decreases-with-depth",
    statement="A baseline's SNNL decreases with depth.",
    metric="probe SNNL of the baseline after the last epoch, deeper − shallower layer, for each consecutive pair",
    direction="less",
    kind="description",
)
def _claim_b(results: TidyResults) -> Evidence:
    base, _ = model_roles(results.suite)
    snnl, layers = _last_epoch_snnl(results)
    if len(layers) < 2:
        raise NotApplicableError(
            f"a trend with depth needs at least 2 layers with an entanglement column, got {layers}"
        )
    b = _by_seed(snnl, base, "training.csv")
    steps = {f"{lo}→{hi}": b[f"entanglement/{hi}"] - b[f"entanglement/{lo}"] for lo, hi in itertools.pairwise(layers)}
    return _all_of({k: v.dropna() for k, v in steps.items()})


@register_claim(
    "c-entangled-clean-accuracy",
    statement="The entangled model's clean accuracy is at least the baseline's (the paper reports a marginal gain).",
    metric="clean test accuracy, entangled − baseline",
    direction="greater",
    smallest_effect=0.01,
)
def _claim_c(results: TidyResults) -> pd.Series:
    base, ent = model_roles(results.suite)
    c = results.clean
    if c.empty or "test_accuracy" not in c.columns:
        raise NotApplicableError("clean.csv has no test_accuracy")
    acc = c.set_index(["model", "seed"])["test_accuracy"]
    both = _paired(_by_seed(acc.to_frame(), ent, "clean.csv")["test_accuracy"],
                   _by_seed(acc.to_frame(), base, "clean.csv")["test_accuracy"], "clean accuracy")  # fmt: skip
    return both["a"] - both["b"]


def _white_box_sets(dk: pd.DataFrame) -> pd.DataFrame:
    """DkNN rows of adversarial sets crafted on the scored model itself."""
    adv = dk[dk["kind"] == "adversarial"]
    if "source" in adv.columns:
        adv = adv[adv["source"] == adv["model"]]
    return adv


@register_claim(
    "d-entangled-dknn-detects-adversarial",
    statement="The entangled model's DkNN credibility on adversarial inputs is lower, equivalently its "
    "clean-vs-adversarial AUROC is higher.",
    metric="DkNN clean-vs-adversarial AUROC on white-box adversarial sets, entangled − baseline, "
    "mean over attacks and eps",
    direction="greater",
)
def _claim_d(results: TidyResults) -> Evidence:
    base, ent = model_roles(results.suite)
    dk = results.dknn
    if dk.empty or not {"model", "seed", "kind", "metric", "value"} <= set(dk.columns):
        raise NotApplicableError("dknn.csv.gz is empty or lacks model/seed/kind/metric/value")
    adv = _white_box_sets(dk)
    names = set(adv["metric"])
    # credibility_auroc: clean vs the adversarial inputs that fooled the classifier (dknn_set_records);
    # the older names counted failed attacks as adversarial and are read only from older runs
    metric = next((m for m in ("credibility_auroc", "auroc", "auroc_clean_vs_set") if m in names), None)
    what = "successful white-box adversarial" if metric == "credibility_auroc" else "white-box adversarial"
    sign, label = 1.0, f"DkNN {metric} (clean vs {what}), entangled − baseline"
    if metric is None:
        if "mean_credibility" not in names:
            raise NotApplicableError("dknn.csv.gz has neither an AUROC nor mean_credibility on adversarial sets")
        metric, sign = "mean_credibility", -1.0
        label = "DkNN mean credibility on white-box adversarial sets, baseline − entangled (higher = entangled lower)"
    rows = adv[adv["metric"] == metric]
    keys = [k for k in ("attack", "eps") if k in rows.columns] or ["input_set"]
    wide = rows.pivot_table(index=["seed", *keys], columns="model", values="value", aggfunc="mean")
    if base not in wide.columns or ent not in wide.columns:
        raise NotApplicableError(f"dknn.csv.gz has no white-box adversarial {metric} for both {base!r} and {ent!r}")
    diff = (sign * (wide[ent] - wide[base])).dropna().groupby(level="seed").mean()
    notes = [f"averaged over {wide.dropna().groupby(level='seed').size().max()} sets"]
    if sign > 0 and {"attack", "eps"} <= set(keys):
        # a sensitivity reading, not the claim: each model against the attack that evades its detector most (per
        # seed and eps, the white-box set with that model's lowest AUROC), as an attacker aiming at the detector
        # (claim d-strongest decides on it, for suites that pre-register it)
        strongest = _strongest_attack_difference(wide, base, ent)
        if len(strongest) >= 2:
            t = _inf.paired_t(strongest.to_numpy(float))
            notes.append(
                f"against each model's strongest attack on the detector: {t.estimate:+.4f} "
                f"[{t.low:+.4f}, {t.high:+.4f}] over {t.n} seeds"
            )
    return Evidence(diff, metric=label, note="; ".join(notes))


def _strongest_attack_difference(wide: pd.DataFrame, base: str, ent: str) -> pd.Series:
    """Per seed: the mean over eps of (the entangled model's lowest white-box AUROC over attacks) minus (the
    baseline's), each model against the attack that evades its own detector most. ``wide``: AUROC indexed by
    (seed, attack, eps) with a column per model."""
    worst = wide[[base, ent]].dropna().groupby(level=["seed", "eps"]).min()
    return (worst[ent] - worst[base]).groupby(level="seed").mean()


@register_claim(
    "d-strongest-entangled-dknn-detects-the-strongest-attack",
    statement="The entangled model's DkNN detects adversarial inputs better (clean-vs-adversarial AUROC higher) "
    "against the attack that evades it most, as an attacker aiming at the detector would choose.",
    metric="DkNN credibility AUROC (clean vs successful white-box adversarial) against each model's most evasive "
    "white-box attack per eps, entangled − baseline, mean over eps",
    direction="greater",
)
def _claim_d_strongest(results: TidyResults) -> Evidence:
    base, ent = model_roles(results.suite)
    dk = results.dknn
    if dk.empty or not {"model", "seed", "kind", "metric", "value", "attack", "eps"} <= set(dk.columns):
        raise NotApplicableError("dknn.csv.gz is empty or lacks model/seed/kind/metric/value/attack/eps")
    rows = _white_box_sets(dk)
    rows = rows[rows["metric"] == "credibility_auroc"]
    wide = rows.pivot_table(index=["seed", "attack", "eps"], columns="model", values="value", aggfunc="mean")
    if base not in wide.columns or ent not in wide.columns:
        raise NotApplicableError(f"dknn.csv.gz has no white-box credibility_auroc for both {base!r} and {ent!r}")
    per_eps = wide[[base, ent]].dropna()
    attacks = per_eps.index.get_level_values("attack").unique()
    if len(attacks) < 2:
        raise NotApplicableError(f"one white-box attack ({', '.join(attacks)}): no choice of the strongest to make")
    strongest = _strongest_attack_difference(wide, base, ent)
    chosen = per_eps.groupby(level=["seed", "eps"]).idxmin()
    counts = {m: chosen[m].map(lambda i: i[1]).value_counts() for m in (base, ent)}
    note = "; ".join(
        f"{m}'s most evasive: " + ", ".join(f"{a} ({n})" for a, n in counts[m].items()) for m in (base, ent)
    )
    return Evidence(strongest, metric=f"DkNN credibility_auroc against the most evasive of {len(attacks)} "
                    "white-box attacks, entangled − baseline", note=f"{note} (seed x eps choices)")  # fmt: skip


def _neighbour_agreement(results: TidyResults) -> pd.DataFrame:
    """Per (model, seed) x kind: the mean share of the k neighbours (over layers) carrying the predicted label
    (:func:`~.example_summary.neighbour_agreement`, from the per-example table or its saved summary)."""
    table = results.example_summary("neighbour_agreement")
    if table.empty:
        raise NotApplicableError(
            "dknn_examples.csv lacks the per-layer neighbour counts (`nbr_pred/<layer>` and `k`); "
            "re-run the DkNN evaluation with a version that records them"
        )
    return table.pivot(index=["model", "seed"], columns="kind", values="agree")


def _drop_components(table: pd.DataFrame, base: str, ent: str, kinds: Sequence[str], what: str) -> Evidence:
    """Components 'clean − kind' for both models and 'entangled drop − baseline drop', per kind."""
    if "clean" not in table.columns:
        raise NotApplicableError(f"no clean inputs in {what}")
    present = [k for k in kinds if k in table.columns]
    if not present:
        raise NotApplicableError(f"no {' or '.join(kinds)} inputs in {what}")
    b, e = _by_seed(table, base, what), _by_seed(table, ent, what)
    comps: dict[str, pd.Series] = {}
    for k in present:
        db, de = b["clean"] - b[k], e["clean"] - e[k]
        comps[f"{base} clean−{k}"] = db
        comps[f"{ent} clean−{k}"] = de
        comps[f"{ent}−{base} ({k})"] = de - db
    return _all_of({n: s.dropna() for n, s in comps.items()})


@register_claim(
    "e-fewer-neighbours-agree-off-distribution",
    statement="For adversarial and out-of-distribution inputs, fewer of the k neighbours carry the predicted "
    "label than for clean inputs, and more so for the entangled model.",
    metric="share of the k neighbours with the predicted label (mean over layers), clean − adversarial/OOD, "
    "for both models and the entangled − baseline contrast",
    direction="greater",
)
def _claim_e(results: TidyResults) -> Evidence:
    base, ent = model_roles(results.suite)
    return _drop_components(_neighbour_agreement(results), base, ent, ("adversarial", "ood"), "dknn_examples.csv")


def disjoint_pairs(pairs: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """A set of (source seed, target seed) pairs that share no seed, taken greedily in seed order.

    The ring design transfers from seed s to seed s+1, so neighbouring pairs share a trained model (s+1 is
    the target of one and the source of the next) and their values are not independent; pairs (0, 1),
    (2, 3), ... are.
    """
    used: set[int] = set()
    out = []
    for src, tgt in sorted(pairs):
        if src != tgt and src not in used and tgt not in used:
            out.append((src, tgt))
            used |= {src, tgt}
    return out


def _cross_seed_gap(m: pd.DataFrame, source: str, base: str, ent: str) -> pd.Series:
    """Per (seed, target seed): transfer from ``source`` of seed s into the entangled minus into the baseline
    target of seed s′ ≠ s, mean over attacks and eps."""
    rows = m[
        (m["source"] == source)
        & (m["metric"] == "transfer_rate")
        & m["target_seed"].notna()
        & (m["target_seed"] != m["seed"])
        & m["target"].isin([base, ent])
    ]
    wide = rows.pivot_table(index=["seed", "target_seed"], columns="target", values="value", aggfunc="mean")
    if rows.empty or base not in wide.columns or ent not in wide.columns:
        raise NotApplicableError(
            f"no cross-seed transfer cells from {source!r} to both {base!r} and {ent!r} of another seed"
        )
    gap = (wide[ent] - wide[base]).dropna()
    gap.index = pd.MultiIndex.from_tuples([(int(a), int(b)) for a, b in gap.index], names=["seed", "target_seed"])
    return gap


@register_claim(
    "f-less-transfer-to-entangled-than-independent-baseline",
    statement="Examples crafted on a baseline transfer less to an entangled target than to an independently "
    "trained baseline.",
    metric="transfer rate from the baseline of seed s to targets of seed s′ ≠ s, entangled − baseline target, "
    "mean over attacks and eps, on source/target seed pairs that share no model",
    direction="less",
    smallest_effect=0.02,
)
def _claim_f(results: TidyResults) -> Evidence:
    base, ent = model_roles(results.suite)
    m = results.metrics
    if m.empty or "target_seed" not in m.columns:
        raise NotApplicableError(
            "transfer_metrics.csv has no `target_seed` column: the run has no independently trained targets "
            "(cross-seed transfer cells; set transfer.cross_seed to ring or all)"
        )
    gap = _cross_seed_gap(m, base, base, ent)
    pairs = disjoint_pairs(list(gap.index))
    units = pd.Series([gap.loc[p] for p in pairs], index=[p[0] for p in pairs], dtype=float)
    notes = [
        f"the unit is a source/target seed pair: {len(pairs)} pairs that share no model "
        f"({', '.join(f'{a}→{b}' for a, b in pairs)}) of the {len(gap)} cross-seed pairs"
    ]

    def summary(v: pd.Series) -> str:
        t = _inf.paired_t(v.to_numpy(float))
        return f"{t.estimate:+.4f} [{t.low:+.4f}, {t.high:+.4f}] over {t.n}"

    notes.append(f"all {len(gap)} pairs, not independent: {summary(gap)}")
    try:  # the same contrast from an entangled surrogate: a sensitivity reading, not the claim
        notes.append(f"from an entangled source: {summary(_cross_seed_gap(m, ent, base, ent).loc[pairs])}")
    except (NotApplicableError, KeyError):
        pass
    return Evidence(units, note="; ".join(notes))


#: Why an OOD claim is not applicable to a run without an OOD set
_NO_OOD = "dknn.csv.gz has no out-of-distribution set (kind == 'ood'); configure evaluations.ood"


@register_claim(
    "g-ood-lower-credibility",
    statement="Out-of-distribution inputs get lower DkNN credibility than clean inputs, more so for the "
    "entangled model.",
    metric="DkNN mean credibility, clean − OOD, for both models and the entangled − baseline contrast",
    direction="greater",
)
def _claim_g(results: TidyResults) -> Evidence:
    base, ent = model_roles(results.suite)
    dk = results.dknn
    if dk.empty or "kind" not in dk.columns or not (dk["kind"] == "ood").any():
        raise NotApplicableError(_NO_OOD)
    cred = dk[(dk["metric"] == "mean_credibility") & dk["kind"].isin(["clean", "ood"])]
    table = cred.groupby(["model", "seed", "kind"])["value"].mean().unstack("kind")
    return _drop_components(table, base, ent, ("ood",), "dknn.csv.gz")


# -- regulariser claims (suites/regularisers.yaml) ---------------------------------------------------
# The statistics and their registration are public so that a plugin regulariser can pre-register the
# same claims about itself: register_ood_auroc_claim("my-ood", "my-regulariser", "My regulariser").

#: The detectors an OOD claim reads, by their column prefix in dknn.csv.gz.
OOD_DETECTORS: tuple[str, ...] = ("credibility", "mahalanobis")


def ood_auroc_gain(results: TidyResults, regulariser: str, detectors: Sequence[str] = OOD_DETECTORS) -> Evidence:
    """Per seed, the minimum over ``detectors`` of the mean over OOD sets of the clean-vs-OOD AUROC of the
    model trained with ``regulariser`` minus the baseline's (positive = it detects every kind better)."""
    base, model = baseline_model(results.suite), regularised_model(results.suite, regulariser)
    dk = results.dknn
    if dk.empty or "kind" not in dk.columns or not (dk["kind"] == "ood").any():
        raise NotApplicableError(_NO_OOD)
    ood = dk[dk["kind"] == "ood"]
    comps: dict[str, pd.Series] = {}
    for det in detectors:
        rows = ood[ood["metric"] == f"{det}_auroc"]
        wide = rows.pivot_table(index=["seed", "input_set"], columns="model", values="value", aggfunc="mean")
        if base not in wide.columns or model not in wide.columns:
            raise NotApplicableError(f"dknn.csv.gz has no OOD {det}_auroc for both {base!r} and {model!r}")
        diff = (wide[model] - wide[base]).dropna()
        comps[f"{det} ({diff.index.get_level_values('input_set').nunique()} OOD sets)"] = diff.groupby(
            level="seed"
        ).mean()
    return _all_of(comps)


def transfer_into_gain(results: TidyResults, regulariser: str) -> Evidence:
    """Per seed, the mean over third-party sources (every model but the two compared), attacks and eps of
    the transfer rate into the model trained with ``regulariser`` minus that into the baseline (same seed)."""
    base, model = baseline_model(results.suite), regularised_model(results.suite, regulariser)
    m = results.metrics
    if m.empty or not {"source", "target", "seed", "metric", "value"} <= set(m.columns):
        raise NotApplicableError("transfer_metrics.csv is empty or lacks source/target/seed/metric/value")
    rows = m[(m["metric"] == "transfer_rate") & ~m["source"].isin([base, model]) & m["target"].isin([base, model])]
    if "target_seed" in rows.columns:  # same-seed cells only: the pairing is by seed
        rows = rows[rows["target_seed"].isna() | (rows["target_seed"] == rows["seed"])]
    keys = [k for k in ("source", "attack", "eps") if k in rows.columns]
    wide = rows.pivot_table(index=["seed", *keys], columns="target", values="value", aggfunc="mean")
    if rows.empty or base not in wide.columns or model not in wide.columns:
        raise NotApplicableError(
            f"no transfer cells from a third model into both {base!r} and {model!r} (the suite needs >= 3 models)"
        )
    diff = (wide[model] - wide[base]).dropna()
    sources = sorted(set(diff.index.get_level_values("source"))) if "source" in keys else []
    return Evidence(
        diff.groupby(level="seed").mean(),
        note=f"mean of {diff.groupby(level='seed').size().max()} cells per seed from {', '.join(sources)}",
    )


def register_ood_auroc_claim(
    name: str, regulariser: str, label: str, *, registry: Registry[Claim] | None = None
) -> Claim:
    """Pre-register "``label`` improves OOD detection over the baseline" for the model trained with
    ``regulariser`` (:func:`ood_auroc_gain`, both detectors); a plugin regulariser can claim it of itself."""
    return register_claim(
        name,
        statement=f"{label} improves out-of-distribution detection over the baseline, by DkNN credibility and by "
        "Mahalanobis distance.",
        metric=f"clean-vs-OOD AUROC, {regulariser} − baseline, mean over OOD sets, for each of the two detectors",
        direction="greater",
        smallest_effect=0.01,
        registry=registry,
    )(functools.partial(ood_auroc_gain, regulariser=regulariser))


def register_transfer_into_claim(
    name: str, regulariser: str, label: str, *, registry: Registry[Claim] | None = None
) -> Claim:
    """Pre-register "``label`` reduces transfer into the model" (:func:`transfer_into_gain`)."""
    return register_claim(
        name,
        statement=f"{label} reduces the transfer of adversarial examples into the model: examples crafted on "
        "third models fool it less often than they fool the baseline.",
        metric=f"transfer rate into {regulariser} − into the baseline, same seed, mean over third-party sources, "
        "attacks and eps",
        direction="less",
        smallest_effect=0.02,
        registry=registry,
    )(functools.partial(transfer_into_gain, regulariser=regulariser))


register_ood_auroc_claim("h-cdd-ood-auroc-higher", "cdd", "Class data description")
register_transfer_into_claim("i-cdd-less-transfer-into", "cdd", "Class data description")
register_ood_auroc_claim("j-supcon-ood-auroc-higher", "supcon", "Supervised contrastive training")
