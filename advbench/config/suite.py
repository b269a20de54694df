"""The suite file format: pydantic models with unknown keys forbidden.

Every field documents itself; ``advbench validate`` binds a YAML file to :class:`Suite` and then
checks names and parameters against the registries (see ``advbench.suite.validate``).
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

__all__ = [
    "AttackConfig",
    "ConvergenceConfig",
    "DatasetConfig",
    "DknnConfig",
    "Eps",
    "EvaluationsConfig",
    "ModelConfig",
    "OODConfig",
    "RecipeConfig",
    "RegulariserConfig",
    "ReportConfig",
    "SNNLConfig",
    "SplitSizes",
    "Suite",
    "TransferConfig",
    "WeightsConfig",
    "parse_eps",
]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


#: an eps written as text: a number or a fraction of two numbers ("8/255", "0.5/255", "1e-3")
_EPS_TEXT = r"(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?(\s*/\s*(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?)?"


def parse_eps(value: object) -> float:
    """Parse an eps given as a number (``0.1``, ``1e-3``) or a fraction string (``"8/255"``) into [0, 1] pixels.

    Fractions are computed exactly, so ``"8/255"`` gives the same float as ``8 / 255``.
    """
    expected = "expected a number in [0, 1] or a fraction like '8/255'"
    if isinstance(value, bool):
        raise ValueError(f"eps {value!r}: {expected}, not a boolean")
    if isinstance(value, str):
        text = value.strip()
        if not re.fullmatch(_EPS_TEXT, text):
            raise ValueError(f"eps {value!r}: {expected}")
        num, _, den = text.partition("/")
        if den and Fraction(den.strip()) == 0:
            raise ValueError(f"eps {value!r} divides by zero: {expected}")
        value = float(Fraction(num.strip()) / Fraction(den.strip())) if den else float(num)
    if not isinstance(value, (int, float)):
        raise ValueError(f"eps {value!r}: {expected}")
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also rejects nan
        hint = f"; write {value:g}/255, not {value:g}" if 1.0 < value <= 255.0 else ""
        raise ValueError(f"eps {value:g} is outside [0, 1]: eps is in pixel units of inputs scaled to [0, 1]{hint}")
    return value


def _no_bool(value: Any) -> Any:
    """YAML reads ``yes``/``true`` as booleans; pydantic would silently take them as 1."""
    if isinstance(value, bool):
        raise ValueError(f"given {value!r}, a boolean; expected a number (YAML reads yes/no/true/false as booleans)")
    return value


Int = Annotated[int, BeforeValidator(_no_bool)]
Float = Annotated[float, BeforeValidator(_no_bool)]
# the schema (`advbench schema`) admits what the validators parse: a fraction string such as "8/255" too
_EpsInput = float | Annotated[str, StringConstraints(pattern=rf"^\s*{_EPS_TEXT}\s*$")]
Eps = Annotated[float, BeforeValidator(parse_eps, json_schema_input_type=_EpsInput)]


def parse_radius(value: Any, info: ValidationInfo) -> float:
    """:func:`parse_eps`, without its upper bound of 1 when the entry's ``norm`` is ``l2``.

    ``info`` must not have a default: pydantic passes it only to validators that require it.
    """
    l2 = isinstance(info.data, dict) and info.data.get("norm") == "l2"
    if l2 and isinstance(value, int | float) and not isinstance(value, bool) and 1.0 < float(value) < float("inf"):
        return float(value)
    return parse_eps(value)


#: a radius: an L-inf eps in [0, 1], or any finite L2 radius >= 0 (``norm`` must precede it)
Radius = Annotated[float, BeforeValidator(parse_radius, json_schema_input_type=_EpsInput)]


class SplitSizes(_Strict):
    """Numbers of examples per split; ``null`` takes all that is left."""

    train: Int | None = Field(None, ge=1, description="training examples (null = all that are left)")
    test: Int | None = Field(None, ge=1, description="test examples (null = all that are left)")
    validation: Int = Field(
        0,
        ge=0,
        description="examples carved from the training pool, disjoint from train, calibration and test; the "
        "entanglement probe and hyper-parameter choices read them (0 = none, and no probe)",
    )


class DatasetConfig(_Strict):
    name: str = Field(description="a registered dataset: `advbench list datasets`")
    data_dir: str | None = Field(
        None, description="folder with the dataset's files (else $ADVBENCH_DATA, system, cache)"
    )
    download: bool = Field(True, description="download a dataset not found locally (checksummed) instead of failing")
    splits: SplitSizes = Field(default_factory=SplitSizes, description="examples per split")
    seed: Int = Field(0, ge=0, description="seed of the train / calibration / test split")
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the loader")


class SNNLConfig(_Strict):
    """The Soft Nearest Neighbor Loss term of the composite objective (docs/method.md, section 3)."""

    alpha: Float = Field(0.0, description="< 0 maximises hidden-layer entanglement, 0 = baseline, > 0 minimises it")
    layers: list[str] | None = Field(None, description="hidden layers to regularise; null = every hidden layer")
    temperature: Literal["learned", "reference", "fixed"] = Field(
        "learned",
        description="learned: log T per layer minimises the layer's SNNL by its own optimiser; reference: the "
        "reference code's T = T0 / t schedule; fixed: T0 throughout",
    )
    T0: Float = Field(100.0, gt=0, description="initial temperature")
    temperature_lr: Float = Field(0.1, gt=0, description="step size of the temperature update")
    distance: Literal["euclidean", "cosine"] = Field("euclidean", description="the SNNL's pairwise distance")


class RegulariserConfig(_Strict):
    """One representation regulariser of the composite objective (docs/regularisers.md)."""

    name: str = Field(description="a registered regulariser: `advbench list regularisers`")
    weight: Float = Field(description="its factor in the loss; the sign matters (e.g. < 0 entangles with snnl)")
    layers: list[str] | None = Field(
        None, description="hidden layers it reads; null = the regulariser's default (snnl: all, others: the last)"
    )
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the regulariser")

    @field_validator("weight")
    @classmethod
    def _nonzero(cls, v: float) -> float:
        if v == 0:
            raise ValueError("given 0; expected a non-zero weight (a zero weight is the baseline): remove the entry")
        return v


class RecipeConfig(_Strict):
    """How advbench trains a model: optimiser, schedule, augmentation and the composite loss."""

    epochs: Int = Field(5, ge=1, description="passes over the training split")
    batch_size: Int = Field(128, ge=2, description="training examples per optimiser step")
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="the torch.optim optimiser")
    lr: Float = Field(1e-3, gt=0, description="learning rate (the schedule's starting value)")
    weight_decay: Float = Field(0.0, ge=0, description="the optimiser's weight decay")
    momentum: Float = Field(0.9, ge=0, lt=1, description="sgd only: its momentum")
    schedule: Literal["constant", "cosine", "step"] = Field(
        "constant", description="learning-rate schedule, stepped once per epoch: constant, cosine to 0, or step"
    )
    milestones: list[Float] = Field(
        [0.5, 0.75], description="step schedule: fractions of the epochs after which lr is multiplied by gamma"
    )
    gamma: Float = Field(0.1, gt=0, le=1, description="step schedule: the lr factor at each milestone")
    augment: Literal["none", "crop-flip"] = Field(
        "none",
        description="training augmentation: crop-flip = random crop after zero padding + horizontal flip (CIFAR); "
        "drawn from the seed, epoch and step alone, so paired variants see the same augmented batches",
    )
    crop_padding: Int = Field(4, ge=0, description="crop-flip: pixels of zero padding on each side before the crop")
    snnl: SNNLConfig = Field(
        default_factory=SNNLConfig, description="the Soft Nearest Neighbor Loss term (alpha 0: a baseline)"
    )
    regularisers: list[RegulariserConfig] = Field(
        default_factory=list, description="further regularisers, each adding weight * its terms to the loss"
    )

    @model_serializer(mode="wrap")
    def _omit_empty_regularisers(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Without regularisers the dump (and so every cache key and model card) is what it was before the field.
        out: dict[str, Any] = handler(self)
        if not self.regularisers:
            out.pop("regularisers", None)
        return out

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0 < f < 1 for f in v) or v != sorted(set(v)):
            raise ValueError(f"milestones {v}: expected increasing, distinct fractions of the epochs in (0, 1)")
        return v


class WeightsConfig(_Strict):
    """A trained model's weights brought by the user: a safetensors file and its digest (never a pickle)."""

    path: str = Field(description="a safetensors file, relative to the project folder (suite path rule)")
    sha256: str = Field(
        pattern=r"^sha256:[0-9a-fA-F]{64}$",
        description="'sha256:<64 hex digits>' of the file (`sha256sum FILE`); the run refuses a different file",
    )


def _recipe_none(value: Any) -> Any:
    """``recipe: none`` (not trained) reads as ``None``."""
    if isinstance(value, str) and value.strip().lower() == "none":
        return None
    return value


#: a recipe, or ``none`` for a model brought already trained (the schema admits the string too)
_RECIPE_OR_NONE = BeforeValidator(_recipe_none, json_schema_input_type=RecipeConfig | Literal["none"] | None)


class ModelConfig(_Strict):
    """One model of the comparison: an architecture trained by a recipe, or a model brought already trained."""

    name: str = Field(pattern=_NAME, max_length=64, description="a label unique within the suite, e.g. 'entangled'")
    architecture: str | None = Field(
        None, description="a registered model: `advbench list models` (or give `builder` instead)"
    )
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the architecture")
    recipe: Annotated[RecipeConfig | None, _RECIPE_OR_NONE] = Field(
        default_factory=RecipeConfig,
        description="how advbench trains it; `none` for a model brought already trained (weights or builder)",
    )
    weights: WeightsConfig | None = Field(
        None, description="bring your own model: its safetensors weights (with `recipe: none`)"
    )
    builder: str | None = Field(
        None,
        description="bring your own model: the name of a model builder an installed package registers in the "
        "`advbench.models` entry-point group (`advbench list models`); it returns a Classifier or "
        "(nn.Module, hidden layer names) and is called with num_classes, input_shape and params",
    )

    @field_validator("builder")
    @classmethod
    def _builder_is_a_name(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if ":" in value or "/" in value or not re.fullmatch(r"[A-Za-z0-9][\w.\-]*", value):
            raise ValueError(
                f"builder {value!r} is not the name of a registered model builder; a suite names models, never "
                "code. Expose the function as an entry point of your package, in pyproject.toml: "
                '[project.entry-points."advbench.models"] my-net = "my_pkg.models:build", install the package '
                "(pip install -e .), and write `builder: my-net` (`advbench list models` shows the names)"
            )
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if self.architecture is None and self.builder is None:
            raise ValueError(
                "architecture: required but missing; expected a registered `architecture` (`advbench list models`) "
                "or, for a model you bring, the `builder` name an installed package registers (`advbench list models`)"
            )
        if self.architecture is not None and self.builder is not None:
            raise ValueError(f"model {self.name!r}: given both architecture and builder; expected exactly one of them")
        if self.recipe is not None and (self.weights is not None or self.builder is not None):
            raise ValueError(
                f"model {self.name!r}: a model brought with weights or a builder is not trained by advbench; "
                "expected `recipe: none`"
            )
        if self.recipe is None and self.weights is None and self.builder is None:
            raise ValueError(
                f"model {self.name!r}: `recipe: none` needs trained weights; expected `weights: {{path, sha256}}` "
                "or a `builder`, or remove `recipe: none` to train it"
            )
        return self

    @property
    def external(self) -> bool:
        """True for a model brought by the user (not trained by advbench)."""
        return self.recipe is None


class AttackConfig(_Strict):
    """A white-box attack run on every model at every radius; its examples also feed transfer and the DkNN."""

    name: str = Field(description="a registered attack: `advbench list attacks`")
    label: str | None = Field(None, pattern=_NAME, description="report label; defaults to the name")
    backend: Literal["torchattacks", "foolbox"] | None = Field(
        None, description="the library that runs a built-in attack; null = the attack's default"
    )
    norm: Literal["linf", "l2"] = Field(
        "linf", description="the threat model's ball: linf (eps in [0, 1]) or l2 (per-example Euclidean radius)"
    )
    eps: list[Radius] = Field(
        min_length=1, description="radii in [0, 1] pixel units for linf ('8/255' accepted); any radius >= 0 for l2"
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of the attack (`advbench list attacks` lists them)"
    )
    batch_size: Int = Field(250, ge=1, description="examples attacked per batch")
    warm_start: bool = Field(
        False,
        description="give the attack the adversarial examples of every other white-box attack of the suite at the "
        "same model, seed, eps and norm (those without warm_start) as candidates and starting points; the attack "
        "must accept them (`set_warm_starts`, as dknn-adaptive does)",
    )

    @model_serializer(mode="wrap")
    def _omit_cold_start(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Without warm starts the dump (the run's resolved suite.json) is what it was before the field.
        out: dict[str, Any] = handler(self)
        if not self.warm_start:
            out.pop("warm_start", None)
        return out

    @field_validator("eps")
    @classmethod
    def _distinct_eps(cls, v: list[float]) -> list[float]:
        dup = sorted({e for e in v if v.count(e) > 1})
        if dup:
            raise ValueError(f"eps {[f'{e:g}' for e in dup]} repeated: expected distinct radii; list each eps once")
        return v

    @property
    def key(self) -> str:
        return self.label or self.name


class TransferConfig(_Strict):
    """Transfer of every source's adversarial examples to every model (docs/method.md)."""

    enabled: bool = Field(True, description="false: no transfer evaluation")
    n_examples: Int | None = Field(1000, ge=1, description="test examples attacked per source (null = all)")
    cross_seed: Literal["ring", "all", "none"] = Field(
        "none",
        description="independent-training control: adversarial sets of seed s also evaluated on the models of "
        "other seeds (ring: the next seed in `seeds`, cyclic; all: every other seed; none: same seed only)",
    )


class DknnConfig(_Strict):
    """Deep k-Nearest Neighbors credibility on clean, adversarial and out-of-distribution inputs."""

    enabled: bool = Field(True, description="false: no DkNN scoring")
    k: Int = Field(75, ge=1, description="neighbours per layer")
    layers: list[str] | None = Field(None, description="layers to index; null = every hidden layer and the logits")
    calibration_size: Int = Field(750, ge=1, description="held-out calibration points, disjoint from train and test")
    n_examples: Int | None = Field(1000, ge=1, description="queries scored per input set (null = all)")
    index: Literal["exact", "ivf", "hnsw"] = Field(
        "exact", description="faiss search: exact (flat), or approximate (ivf, hnsw) with its recall reported"
    )
    distance: Literal["euclidean", "cosine"] = Field("euclidean", description="the neighbour search's distance")


class OODConfig(_Strict):
    """Out-of-distribution inputs scored by the DkNN: a named dataset and/or shift sets of the test images.

    ``shifts`` are ``"<corruption>:<severity>"`` names (``advbench.data.shift``: gaussian_noise,
    uniform_noise, blur, rotation, contrast, inversion at severity 1..5), each made from the DkNN's
    scored clean test examples (so it has ``evaluations.dknn.n_examples`` of them) and labelled near or far.
    """

    dataset: str | None = Field(
        None, description="a registered dataset presented to the models as out-of-distribution (optional)"
    )
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the dataset's loader")
    n_examples: Int = Field(1000, ge=1, description="examples drawn from `dataset` (shift sets use the scored ones)")
    shifts: list[str] = Field(
        default_factory=list,
        description="seeded shift sets of the scored test images, e.g. ['gaussian_noise:2', 'inversion:5']",
    )

    @field_validator("shifts")
    @classmethod
    def _shift_names(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if not re.fullmatch(r"[a-z_]+([:\-][1-9])?", s)]
        if bad:
            raise ValueError(
                f"shifts {bad}: expected '<corruption>:<severity 1..5>' names such as 'rotation:2' "
                f"(corruptions: gaussian_noise, uniform_noise, blur, rotation, contrast, inversion)"
            )
        dup = sorted({s for s in v if v.count(s) > 1})
        if dup:
            raise ValueError(f"shifts {dup} repeated: expected each shift set once")
        return v

    @model_validator(mode="after")
    def _something_to_score(self) -> OODConfig:
        if self.dataset is None and not self.shifts:
            raise ValueError(
                "evaluations.ood has neither a dataset nor shifts; expected at least one: name a registered "
                "dataset or list shift sets such as ['gaussian_noise:2', 'inversion:5']"
            )
        if self.dataset is None and self.params:
            raise ValueError("evaluations.ood.params given without a dataset; expected params only with `dataset`")
        return self


class ConvergenceConfig(_Strict):
    """The convergence check of every attack on the DkNN (property ``adaptive-dknn``), on the suite's first seed.

    The attack is run again on the first ``n_examples`` attacked examples with ``factor`` times its steps and
    restarts; when that lowers the DkNN's accuracy on them by more than ``tolerance``, the report flags the
    attack as not converged, with both accuracies.
    """

    enabled: bool = Field(True, description="false: no convergence check")
    n_examples: Int = Field(200, ge=1, description="attacked examples re-attacked (the first of the fixed subset)")
    factor: Int = Field(2, ge=2, description="the multiple of the attack's steps and restarts in the check")
    tolerance: Float = Field(
        0.005, ge=0, lt=1, description="the largest drop of DkNN accuracy (a fraction) still called converged"
    )


class EvaluationsConfig(_Strict):
    """What is measured beyond clean and white-box robust accuracy."""

    transfer: TransferConfig = Field(default_factory=TransferConfig, description="attack transfer between models")
    dknn: DknnConfig | None = Field(None, description="DkNN credibility and calibration (null = none)")
    ood: OODConfig | None = Field(None, description="out-of-distribution sets scored by the DkNN (null = none)")
    convergence: ConvergenceConfig = Field(
        default_factory=ConvergenceConfig, description="the convergence check of attacks on the DkNN"
    )


class ReportConfig(_Strict):
    """Where the Markdown report goes."""

    output: str = Field("reports/{name}.md", description="Markdown file; {name} is the suite's name")
    plots: bool = Field(True, description="write the report's figures (PNG, beside the report)")


class Suite(_Strict):
    """A benchmark suite: a dataset, paired models, seeds, attacks and evaluations."""

    name: str = Field(pattern=_NAME, max_length=100, description="names the run folders and the report")
    description: str = Field("", description="free text shown at the top of the report")
    dataset: DatasetConfig = Field(description="the data every model trains and is evaluated on")
    models: list[ModelConfig] = Field(
        min_length=1, description="the models compared; the first is the reference of paired comparisons"
    )
    seeds: list[Int] = Field(
        [0], min_length=1, description="training seeds: the replicates of every model (one model per seed)"
    )
    attacks: list[AttackConfig] = Field(default_factory=list, description="white-box attacks run on every model")
    evaluations: EvaluationsConfig = Field(default_factory=EvaluationsConfig, description="transfer, DkNN and OOD")
    report: ReportConfig = Field(default_factory=ReportConfig, description="the Markdown report")
    claims: list[str] | None = Field(
        None, description="pre-registered claims to decide (`advbench list claims`); null = every registered claim"
    )
    device: Literal["cpu", "cuda", "auto"] = Field(
        "cpu", description="where cells compute (auto: cuda when available); part of every cell's key"
    )
    cache_dir: str | None = Field(
        None, description="content-addressed cache; default $ADVBENCH_CACHE or ~/.cache/advbench"
    )

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        dup = sorted({s for s in v if v.count(s) > 1})
        if dup:
            raise ValueError(f"seeds {dup} repeated: expected distinct seeds; list each seed once")
        neg = [s for s in v if s < 0]
        if neg:
            raise ValueError(f"seeds {neg}: expected seeds >= 0")
        return v

    @property
    def calibration_size(self) -> int:
        d = self.evaluations.dknn
        return d.calibration_size if d is not None and d.enabled else 0

    def warm_start_sources(self, attack: AttackConfig, eps: float) -> list[str]:
        """The attacks (by key, in suite order) whose examples ``attack`` (with ``warm_start``) starts from at
        ``eps``: every other attack of the suite at that eps and norm without ``warm_start`` itself."""
        same = (b for b in self.attacks if b is not attack and b.norm == attack.norm and eps in b.eps)
        return [b.key for b in same if not b.warm_start]
