"""Reading tf_keras model files (``.h5`` and ``.keras``) with h5py, no TensorFlow.

What tf_keras 2.x writes (measured with tf_keras 2.21):

* ``model.save("m.h5")``: an HDF5 file whose root attribute ``model_config``
  is the model's JSON config; the weights of top-level layer ``L`` are in
  group ``model_weights/L``, whose attribute ``weight_names`` lists them in
  ``get_weights()`` order (``"L/kernel:0"``, ``"L/bias:0"``, datasets at
  ``model_weights/L/L/kernel:0``). A nested model ``S`` has one group
  ``model_weights/S`` listing the weights of all its layers
  (``"inner/kernel:0"``). Only a model's first layer (or its ``InputLayer``)
  records an input shape.
* ``model.save("m.keras")``: a zip with ``config.json`` (the same config, plus
  a ``build_config`` with the ``input_shape`` of every top-level layer),
  ``metadata.json`` and ``model.weights.h5``, where a layer's weights are the
  datasets ``layers/<name>/vars/0``, ``1``, ... in ``get_weights()`` order.
  ``<name>`` is not the layer's name but its class name in snake case,
  numbered among the model's layers of that class: ``locally_connected2d``,
  ``locally_connected2d_1``, ...; nested models add ``layers/<sub>/layers/...``.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from flax_local._src.keras.importing import KERAS_CLASSES, from_keras, keras_layout
from flax_local._src.keras.layouts import infer_input_shape

_MODEL_CLASSES = ("Sequential", "Functional", "Model")


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading Keras model files needs h5py: pip install h5py (or flax_local[keras])."
        ) from error
    return h5py


def _snake_case(name: str) -> str:
    """tf_keras's ``generic_utils.to_snake_case``."""
    intermediate = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    snake = re.sub("([a-z])([A-Z])", r"\1_\2", intermediate).lower()
    return snake if snake[0] != "_" else "private" + snake


def _decode(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class _ModelFile:
    """The config and weight store of a ``.h5`` or ``.keras`` model file."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        h5py = _h5py()
        if zipfile.is_zipfile(self.path):
            with zipfile.ZipFile(self.path) as archive:
                names = set(archive.namelist())
                if "config.json" not in names or "model.weights.h5" not in names:
                    raise ValueError(
                        f"{self.path} is a zip file but not a tf_keras .keras model (it lacks "
                        f"config.json or model.weights.h5; it has {sorted(names)})."
                    )
                self.config = json.loads(archive.read("config.json"))
                weights = archive.read("model.weights.h5")
            self.format = "keras"
            self.h5 = h5py.File(io.BytesIO(weights), "r")
        else:
            try:
                self.h5 = h5py.File(self.path, "r")
            except OSError as error:
                raise ValueError(f"{self.path} is neither a .keras zip nor an HDF5 file.") from error
            if "model_config" not in self.h5.attrs:
                self.h5.close()
                raise ValueError(
                    f"{self.path} holds no model config (it was probably written by save_weights()); "
                    "save the whole model with model.save(), or convert layers one by one with "
                    "from_keras(layer.get_config(), layer.get_weights(), input_shape)."
                )
            self.config = json.loads(_decode(self.h5.attrs["model_config"]))
            self.format = "h5"

    def close(self) -> None:
        self.h5.close()

    def weights(self, path: tuple[str, ...], keras_path: str) -> list[np.ndarray]:
        """The weights of the layer at ``path`` (layer names from the top)."""
        if self.format == "keras":
            group = self.h5.get(f"{keras_path}/vars")
            if group is None:
                raise ValueError(f"{self.path}: no weights at {keras_path}/vars in model.weights.h5.")
            return [np.asarray(group[str(i)]) for i in range(len(group))]
        root = self.h5["model_weights"] if "model_weights" in self.h5 else self.h5
        top = root.get(path[0])
        if top is None:
            raise ValueError(f"{self.path}: no weight group for layer {path[0]!r}.")
        names = [_decode(n) for n in top.attrs.get("weight_names", [])]
        mine = [n for n in names if n.split("/")[-2:-1] == [path[-1]]]
        if not mine:
            raise ValueError(
                f"{self.path}: group {path[0]!r} lists no weights of layer {path[-1]!r} (it lists {names})."
            )
        return [np.asarray(top[n]) for n in mine]


def read_model_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The model config (``model.get_config()`` with class names) stored in a file.

    Args:
      path: a ``.h5`` file written by ``model.save`` or a ``.keras`` file.

    Returns:
      ``{"class_name": ..., "config": {...}}`` as JSON-decoded by tf_keras.

    Example:
      >>> import os, tempfile, zipfile
      >>> path = os.path.join(tempfile.mkdtemp(), "empty.keras")
      >>> with zipfile.ZipFile(path, "w") as z:
      ...     z.writestr("config.json", '{"class_name": "Sequential", "config": {"layers": []}}')
      ...     z.writestr("model.weights.h5", b"")
      >>> read_model_config(path)["class_name"]
      'Sequential'
    """
    path = os.fspath(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json"))
    h5py = _h5py()
    with h5py.File(path, "r") as f:
        if "model_config" not in f.attrs:
            raise ValueError(f"{path} holds no model config (written by save_weights()?).")
        return json.loads(_decode(f.attrs["model_config"]))


class _Layer:
    """A LocallyConnected layer found in a model config."""

    def __init__(
        self, entry: Mapping[str, Any], path: tuple[str, ...], keras_path: str, model: Mapping[str, Any]
    ):
        self.entry = entry
        self.config = dict(entry["config"])
        self.path = path
        self.keras_path = keras_path
        self.model = model  # the config of the model that holds it

    @property
    def key(self) -> str:
        return "/".join(self.path)


def _model_layers(model: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    layers = model.get("config", {}).get("layers")
    return list(layers) if isinstance(layers, list) else []


def _walk(model: Mapping[str, Any], path: tuple[str, ...] = (), keras_path: str = "") -> Iterator[_Layer]:
    counts: dict[str, int] = {}
    for entry in _model_layers(model):
        class_name = entry.get("class_name", "")
        config = entry.get("config", {})
        name = config.get("name", entry.get("name", ""))
        snake = _snake_case(class_name) if class_name else "layer"
        index = counts.get(snake, -1) + 1
        counts[snake] = index
        inner = f"{keras_path}layers/{snake if index == 0 else f'{snake}_{index}'}"
        if class_name in KERAS_CLASSES:
            yield _Layer(entry, (*path, name), inner, model)
        elif class_name in _MODEL_CLASSES or "layers" in config:
            yield from _walk(entry, (*path, name), inner + "/")


def _inbound_names(entry: Mapping[str, Any]) -> list[str]:
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


def _declared_input_shape(layer: _Layer) -> tuple[int, ...] | None:
    """The input shape recorded in the config, without batch, if any."""
    build = layer.entry.get("build_config") or {}
    shape = build.get("input_shape") or layer.config.get("batch_input_shape")
    if shape is None:
        model_layers = _model_layers(layer.model)
        by_name = {e.get("config", {}).get("name", e.get("name")): e for e in model_layers}
        sources = _inbound_names(layer.entry)
        if not sources and layer.model.get("class_name") == "Sequential":
            position = next(i for i, e in enumerate(model_layers) if e is layer.entry)
            if position > 0:
                sources = [model_layers[position - 1].get("config", {}).get("name")]
        if len(sources) == 1 and by_name.get(sources[0], {}).get("class_name") == "InputLayer":
            shape = by_name[sources[0]]["config"].get("batch_input_shape")
    if shape is None or any(v is None for v in shape[1:]):
        return None
    return tuple(int(v) for v in shape[1:])


def load_weights(
    path: str | os.PathLike[str],
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    implementation: str | int | None = None,
) -> dict[str, tuple[Any, dict[str, dict[str, Any]]]]:
    """Converts every LocallyConnected1D/2D layer of a saved tf_keras model.

    The file is read with h5py (and zipfile); TensorFlow is not needed.
    Each layer's input shape comes from the file (the ``build_config`` of a
    ``.keras`` file, the layer's ``batch_input_shape``, or the ``InputLayer``
    feeding it) or else from its weights where they determine it
    (implementation 2 kernels hold it; implementation 1 in 1D with stride 1).
    Layers deeper in a ``.h5`` model need ``input_shapes``.

    Args:
      path: a model file written by tf_keras ``model.save("....h5")`` or
        ``model.save("....keras")``.
      input_shapes: optional input shapes (without batch, in the layer's
        ``data_format``) by layer key, overriding the file.
      implementation: flax_local implementation for every module; default
        (None) keeps each layer's Keras choice.

    Returns:
      ``{key: (module, variables)}`` in the model's layer order, as
      ``from_keras`` returns them. ``key`` is the layer's name, prefixed with
      the names of enclosing models (``"inner_model/layer"``) for nested ones.

    Raises:
      ValueError: for a file that is not a full tf_keras model, a layer
        config without a flax_local equivalent, or a layer whose input shape
        is neither recorded nor implied by its weights.

    Example:
      >>> from flax_local.keras import load_weights
      >>> layers = load_weights("model.keras")  # doctest: +SKIP
      >>> module, variables = layers["locally_connected2d"]  # doctest: +SKIP
      >>> y = module.apply(variables, x)  # doctest: +SKIP
    """
    overrides = dict(input_shapes or {})
    model_file = _ModelFile(path)
    try:
        found = list(_walk(model_file.config))
        unknown = set(overrides) - {layer.key for layer in found} - {layer.path[-1] for layer in found}
        if unknown:
            raise ValueError(
                f"input_shapes names {sorted(unknown)}, which are not LocallyConnected layers of "
                f"{model_file.path} (those are {[layer.key for layer in found]})."
            )
        result = {}
        for layer in found:
            weights = model_file.weights(layer.path, layer.keras_path)
            shape = overrides.get(layer.key, overrides.get(layer.path[-1]))
            if shape is None:
                shape = _declared_input_shape(layer)
            if shape is None:
                shape = _inferred_input_shape(layer, weights)
            if shape is None:
                raise ValueError(
                    f"{model_file.path}: the input shape of layer {layer.key!r} is not recorded in the "
                    "file and its weights do not determine it; pass "
                    f"input_shapes={{{layer.key!r}: (...)}} (without batch, in its data_format)."
                )
            result[layer.key] = from_keras(
                {"class_name": layer.entry["class_name"], "config": layer.config},
                weights,
                tuple(shape),
                implementation=implementation,
            )
        return result
    finally:
        model_file.close()


def _inferred_input_shape(layer: _Layer, weights: list[np.ndarray]) -> tuple[int, ...] | None:
    rank = KERAS_CLASSES[layer.entry["class_name"]]
    config = layer.config
    kernel_size = config["kernel_size"]
    kernel_size = (kernel_size,) * rank if isinstance(kernel_size, int) else tuple(kernel_size)
    strides = config.get("strides", 1)
    strides = (strides,) * rank if isinstance(strides, int) else tuple(strides)
    shape = infer_input_shape(
        weights[0].shape,
        implementation=int(config.get("implementation", 1)),
        kernel_size=kernel_size,
        strides=strides,
        padding=config.get("padding", "valid"),
        data_format=config.get("data_format") or "channels_last",
    )
    if shape is not None:
        keras_layout({"class_name": layer.entry["class_name"], "config": config}, shape)
    return shape
