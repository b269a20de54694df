"""Model architectures (a registry of factories) and the :class:`Classifier` wrapper.

An architecture may declare its hidden layers when it registers, so that they can be checked
before anything is built (``advbench validate`` refuses unknown names in ``snnl.layers``,
``dknn.layers`` and an attack's ``layers``)::

    @register_model("my-cnn", layers=("conv1", "conv2", "fc1"))
    def my_cnn(*, num_classes, input_shape): ...

``layers`` is the tuple of hidden layers (the logits are always ``"logits"``), or a function of the
architecture's hyper-parameters returning it when they decide the layers (see ``mlp``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from advbench.models.classifier import Classifier
from advbench.registry import Registry

__all__ = ["MODELS", "Classifier", "create_model", "declared_hidden_layers", "register_model"]

#: name -> factory(*, num_classes, input_shape, **params) -> Classifier
MODELS: Registry = Registry("model", group="advbench.models")
register_model = MODELS.register


def create_model(name: str, *, num_classes: int, input_shape: tuple[int, int, int], **params: object) -> Classifier:
    """Build the registered architecture ``name`` for the given input shape and class count."""
    return MODELS.create(name, num_classes=num_classes, input_shape=tuple(input_shape), **params)


def declared_hidden_layers(name: str, params: Mapping[str, Any] | None = None) -> tuple[str, ...] | None:
    """The hidden layers architecture ``name`` declared at registration, for ``params``; nothing is built.

    None when the architecture declared none (a plugin may not), or when its ``layers`` function
    cannot take ``params`` (the parameter check reports those).
    """
    layers = MODELS.metadata(name).get("layers")
    if layers is None:
        return None
    if callable(layers):
        try:
            layers = layers(**dict(params or {}))
        except (TypeError, ValueError):
            return None
    return tuple(str(n) for n in layers)
