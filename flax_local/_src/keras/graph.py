"""The LocallyConnected layers of a tf_keras model config, and the shapes flowing into them.

A saved model config lists its layers; a functional model's entries name the
layers feeding them (``inbound_nodes``), a Sequential model's follow each
other. ``Shapes`` walks that graph from the model's ``InputLayer``: a
LocallyConnected layer's output shape follows from its config and input
shape, and the layers in ``SHAPE_PRESERVING`` pass their input shape on. A
layer of any other class stops the walk with ``UnknownShape`` naming it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from flax_local._src.keras.importing import KERAS_CLASSES, keras_layout

MODEL_CLASSES = ("Sequential", "Functional", "Model")
# Layers whose output has their input's shape (elementwise maps, noise, normalization).
SHAPE_PRESERVING = frozenset(
    {
        "Activation",
        "ActivityRegularization",
        "AlphaDropout",
        "BatchNormalization",
        "Dropout",
        "ELU",
        "GaussianDropout",
        "GaussianNoise",
        "GroupNormalization",
        "LayerNormalization",
        "LeakyReLU",
        "Masking",
        "PReLU",
        "ReLU",
        "Softmax",
        "SpatialDropout1D",
        "SpatialDropout2D",
        "ThresholdedReLU",
        "UnitNormalization",
    }
)

Shape = tuple[int, ...]


class UnknownShape(Exception):
    """A shape the model config does not determine, naming the layer that hides it."""

    def __init__(self, layer: str, reason: str):
        super().__init__(f"layer {layer!r} {reason}")
        self.layer = layer


@dataclasses.dataclass(frozen=True, eq=False)
class Scope:
    """One (possibly nested) model: its entry, and where it sits in its parent."""

    model: Mapping[str, Any]
    parent: Scope | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class Layer:
    """A LocallyConnected layer found in a model config.

    ``path`` is the layer's name after those of its enclosing models;
    ``keras_path`` its group in a ``.keras`` file's ``model.weights.h5``.
    """

    entry: Mapping[str, Any]
    path: tuple[str, ...]
    keras_path: str
    scope: Scope

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.entry["config"])

    @property
    def key(self) -> str:
        return "/".join(self.path)


def _snake_case(name: str) -> str:
    """tf_keras's ``generic_utils.to_snake_case``."""
    intermediate = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    snake = re.sub("([a-z])([A-Z])", r"\1_\2", intermediate).lower()
    return snake if snake[0] != "_" else "private" + snake


def _name(entry: Mapping[str, Any]) -> str:
    config = entry.get("config")
    return str((config if isinstance(config, Mapping) else {}).get("name", entry.get("name", "")))


def model_layers(model: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    config = model.get("config")
    layers = config.get("layers") if isinstance(config, Mapping) else None
    return [e for e in layers if isinstance(e, Mapping)] if isinstance(layers, list) else []


def _is_model(entry: Mapping[str, Any]) -> bool:
    config = entry.get("config")
    return entry.get("class_name") in MODEL_CLASSES or (isinstance(config, Mapping) and "layers" in config)


def find_layers(
    model: Mapping[str, Any], scope: Scope | None = None, path: tuple[str, ...] = (), keras_path: str = ""
) -> Iterator[Layer]:
    """The LocallyConnected layers of ``model``, nested models included, in config order."""
    scope = scope or Scope(model)
    counts: dict[str, int] = {}
    for entry in model_layers(model):
        class_name = str(entry.get("class_name", ""))
        snake = _snake_case(class_name) if class_name else "layer"
        index = counts.get(snake, -1) + 1
        counts[snake] = index
        inner = f"{keras_path}layers/{snake if index == 0 else f'{snake}_{index}'}"
        if class_name in KERAS_CLASSES:
            yield Layer(entry, (*path, _name(entry)), inner, scope)
        elif _is_model(entry):
            yield from find_layers(entry, Scope(entry, scope), (*path, _name(entry)), inner + "/")


def inbound_names(entry: Mapping[str, Any]) -> list[str]:
    """Names of the layers feeding a functional-model layer (both node formats)."""
    names = []
    for node in entry.get("inbound_nodes") or []:
        if isinstance(node, list):  # [[name, node_index, tensor_index, kwargs], ...]
            names.extend(str(item[0]) for item in node if isinstance(item, list) and item)
        elif isinstance(node, Mapping):  # {"args": [{"config": {"keras_history": [...]}}], ...}
            for arg in node.get("args", []):
                history = arg.get("config", {}).get("keras_history") if isinstance(arg, Mapping) else None
                if history:
                    names.append(str(history[0]))
    return names


def declared_input_shape(entry: Mapping[str, Any]) -> Shape | None:
    """The input shape (no batch) a layer entry records itself, if complete."""
    config = entry.get("config") if isinstance(entry.get("config"), Mapping) else {}
    build = entry.get("build_config") or {}
    shape = (build.get("input_shape") if isinstance(build, Mapping) else None) or config.get(
        "batch_input_shape"
    )
    return _without_batch(shape)


def _without_batch(shape: Any) -> Shape | None:
    if not isinstance(shape, (list, tuple)) or len(shape) < 2:
        return None
    if any(isinstance(v, bool) or not isinstance(v, int) for v in shape[1:]):
        return None  # unknown (None) dimensions
    return tuple(shape[1:])


class Shapes:
    """Input and output shapes (without batch) of the layers of one model config.

    Args:
      lc_input_shape: the input shape of a LocallyConnected layer. It may
        call back into ``input_shape`` and raise ``UnknownShape``.
    """

    def __init__(self, layers: list[Layer], lc_input_shape: Callable[[Layer], Shape]):
        self._layers = {id(layer.entry): layer for layer in layers}
        self._lc_input_shape = lc_input_shape
        self._outputs: dict[int, Shape] = {}
        self._active: set[int] = set()

    def input_shape(self, scope: Scope, entry: Mapping[str, Any]) -> Shape:
        """The shape feeding ``entry`` in ``scope``'s model, or ``UnknownShape``."""
        declared = declared_input_shape(entry)
        if declared is not None:
            return declared
        layers = model_layers(scope.model)
        if scope.model.get("class_name") == "Sequential":
            position = next(i for i, e in enumerate(layers) if e is entry)
            if position > 0:
                return self.output_shape(scope, layers[position - 1])
            return self._model_input(scope, entry)
        sources = inbound_names(entry)
        by_name = {_name(e): e for e in layers}
        if not sources or any(name not in by_name for name in sources):
            raise UnknownShape(_name(entry), "has no inbound layer recorded in the model config")
        shapes = {self.output_shape(scope, by_name[name]) for name in sources}
        if len(shapes) != 1:
            raise UnknownShape(_name(entry), f"is fed inputs of different shapes {sorted(shapes)}")
        return shapes.pop()

    def _model_input(self, scope: Scope, entry: Mapping[str, Any]) -> Shape:
        if scope.parent is None:
            raise UnknownShape(_name(entry), "is a model's first layer and records no input shape")
        return self.input_shape(scope.parent, scope.model)

    def output_shape(self, scope: Scope, entry: Mapping[str, Any]) -> Shape:
        """The output shape of ``entry`` in ``scope``'s model, or ``UnknownShape``."""
        key = id(entry)
        if key in self._outputs:
            return self._outputs[key]
        if key in self._active:
            raise UnknownShape(_name(entry), "feeds itself in the model config")
        self._active.add(key)
        try:
            shape = self._compute_output_shape(scope, entry)
        finally:
            self._active.discard(key)
        self._outputs[key] = shape
        return shape

    def _compute_output_shape(self, scope: Scope, entry: Mapping[str, Any]) -> Shape:
        class_name = entry.get("class_name")
        config = entry.get("config") if isinstance(entry.get("config"), Mapping) else {}
        if class_name == "InputLayer":
            shape = _without_batch(config.get("batch_input_shape") or config.get("batch_shape"))
            if shape is None:
                raise UnknownShape(_name(entry), "records no complete input shape")
            return shape
        if class_name in KERAS_CLASSES:
            layer = self._layers[id(entry)]
            layout = keras_layout(entry, self._lc_input_shape(layer))
            if layout.channels_first:
                return (layout.filters, *layout.out_spatial)
            return (*layout.out_spatial, layout.filters)
        if class_name in SHAPE_PRESERVING:
            return self.input_shape(scope, entry)
        if _is_model(entry):
            return self._model_output(Scope(entry, scope))
        raise UnknownShape(_name(entry), f"({class_name}) has an output shape that flax_local does not infer")

    def _model_output(self, scope: Scope) -> Shape:
        layers = model_layers(scope.model)
        name = _name(scope.model)
        if scope.model.get("class_name") == "Sequential":
            if not layers:
                return self._model_input(scope, scope.model)
            return self.output_shape(scope, layers[-1])
        outputs = scope.model.get("config", {}).get("output_layers") or []
        if outputs and isinstance(outputs[0], str):  # a single output, not wrapped in a list
            outputs = [outputs]
        if len(outputs) != 1 or not isinstance(outputs[0], list) or not outputs[0]:
            raise UnknownShape(name, "does not have exactly one recorded output")
        by_name = {_name(e): e for e in layers}
        if outputs[0][0] not in by_name:
            raise UnknownShape(name, f"names an output layer {outputs[0][0]!r} it does not hold")
        return self.output_shape(scope, by_name[outputs[0][0]])
