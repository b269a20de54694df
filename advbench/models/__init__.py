"""Model architectures (a registry of factories) and the :class:`Classifier` wrapper."""

from __future__ import annotations

from advbench.models.classifier import Classifier
from advbench.registry import Registry

__all__ = ["MODELS", "Classifier", "create_model", "register_model"]

#: name -> factory(*, num_classes, input_shape, **params) -> Classifier
MODELS: Registry = Registry("model", group="advbench.models")
register_model = MODELS.register


def create_model(name: str, *, num_classes: int, input_shape: tuple[int, int, int], **params: object) -> Classifier:
    """Build the registered architecture ``name`` for the given input shape and class count."""
    return MODELS.create(name, num_classes=num_classes, input_shape=tuple(input_shape), **params)
