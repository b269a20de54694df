"""Models a user brings: weights from a safetensors file, or a network built by their own code.

* :func:`load_weights` reads a safetensors file after checking its sha256 against the one the suite
  states; anything that is not safetensors (a pickle, a ``torch.save`` zip) is refused unread.
* :func:`build_brought_model` calls the builder an installed package registers in the ``advbench.models``
  entry-point group (a suite names it; it never names code) with ``num_classes``, ``input_shape`` and the
  model's params. The function returns a :class:`Classifier`, or a pair
  ``(nn.Module, layer_names)``: any module mapping pixels in [0, 1] to logits, and the dotted names of
  the submodules whose outputs are its hidden representations (read by the DkNN and by attacks on
  hidden layers). Such a pair is wrapped in :class:`HookedClassifier`, which reads the layers with
  forward hooks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from advbench.errors import AdvbenchError
from advbench.hashing import sha256_file
from advbench.models.classifier import Classifier

__all__ = ["HookedClassifier", "build_brought_model", "load_weights"]


class HookedClassifier(nn.Module):
    """An arbitrary ``nn.Module`` with named hidden layers, exposing :class:`Classifier`'s reading API.

    ``layers`` are dotted submodule names (``"features.3"``); ``features(x, layers)`` returns their
    outputs (and ``"logits"``, the module's output) from one forward pass.
    """

    def __init__(
        self,
        module: nn.Module,
        layers: Sequence[str],
        *,
        num_classes: int,
        input_shape: tuple[int, int, int],
        arch: str,
    ) -> None:
        super().__init__()
        self.net = module
        subs = dict(module.named_modules())
        unknown = [n for n in layers if n not in subs or n == ""]
        if unknown:
            known = [n for n in subs if n][:20]
            raise AdvbenchError(
                f"{arch}: layers {unknown} are not submodules of the built network; expected dotted names "
                f"from named_modules(), e.g. {known}"
            )
        if "logits" in layers:
            raise AdvbenchError(f"{arch}: 'logits' is the network's output; list only hidden layers")
        self.hidden_layers: tuple[str, ...] = tuple(layers)
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        self.arch = arch

    @property
    def layer_names(self) -> tuple[str, ...]:
        return (*self.hidden_layers, "logits")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]

    def features(self, x: torch.Tensor, layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Outputs of the named ``layers`` (default: every hidden layer and the logits)."""
        wanted = list(self.layer_names if layers is None else layers)
        missing = [w for w in wanted if w not in self.layer_names]
        if missing:
            raise KeyError(f"unknown layers {missing} for {self.arch}; readable layers: {list(self.layer_names)}")
        subs = dict(self.net.named_modules())
        out: dict[str, torch.Tensor] = {}
        handles = []
        for name in wanted:
            if name == "logits":
                continue

            def hook(_m: nn.Module, _i: Any, output: Any, name: str = name) -> None:
                out[name] = output

            handles.append(subs[name].register_forward_hook(hook))
        try:
            logits = self.net(x)
        finally:
            for h in handles:
                h.remove()
        out["logits"] = logits
        return {w: out[w] for w in wanted}


def load_weights(model: nn.Module, path: str | Path, sha256: str, *, what: str) -> None:
    """Load the safetensors file ``path`` into ``model`` (strict) after checking its ``sha256:<hex>`` digest."""
    p = Path(path)
    if not p.is_file():
        raise AdvbenchError(f"{what}: weights file {str(p)!r} not found; expected a safetensors file at that path")
    expected = sha256.removeprefix("sha256:").lower()
    actual = sha256_file(p)
    if actual != expected:
        raise AdvbenchError(
            f"{what}: weights file {str(p)!r} has sha256 {actual}, the suite expects {expected}; the file changed "
            f"or the suite's digest is wrong. If the file is the one you mean, write sha256: 'sha256:{actual}'"
        )
    with p.open("rb") as fh:
        head = fh.read(9)
    n = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    if not (len(head) == 9 and 2 <= n <= p.stat().st_size - 8 and head[8:9] == b"{"):
        raise AdvbenchError(
            f"{what}: {str(p)!r} is not a safetensors file (it starts with {head[:8]!r}); advbench never unpickles "
            f"weights. Convert it: safetensors.torch.save_file(model.state_dict(), 'model.safetensors')"
        )
    state = load_file(str(p), device="cpu")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise AdvbenchError(
            f"{what}: the weights in {str(p)!r} hold NaN or infinite values ({', '.join(bad[:5])}"
            f"{', ...' if len(bad) > 5 else ''}); a model with them computes nothing meaningful. Check the file"
        )
    target = model.net if isinstance(model, HookedClassifier) else model  # the user's module's own keys
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise AdvbenchError(f"{what}: the weights in {str(p)!r} do not fit the model ({exc})") from None


def build_brought_model(
    name: str, *, num_classes: int, input_shape: tuple[int, int, int], params: dict[str, Any], what: str
) -> Classifier | HookedClassifier:
    """Call the model builder registered as ``name`` (an installed package's ``advbench.models`` entry point)
    and wrap what it returns (see the module docstring). Nothing a suite names is imported: only a registry
    entry is looked up."""
    from advbench.models import MODELS

    if name not in MODELS:
        MODELS.entry(name)  # raises, naming close matches
    built = MODELS.get(name)(num_classes=num_classes, input_shape=tuple(input_shape), **params)
    if isinstance(built, Classifier):
        return built
    if isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], nn.Module):
        module, layers = built
        return HookedClassifier(
            module, [str(x) for x in layers], num_classes=num_classes, input_shape=input_shape, arch=name
        )
    raise AdvbenchError(
        f"{what}: builder {name!r} returned {type(built).__name__}; expected a Classifier or a pair "
        f"(nn.Module, [hidden layer names])"
    )
