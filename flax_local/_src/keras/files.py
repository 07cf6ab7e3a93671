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

Every failure to read a file raises a ``ValueError`` that names the file and
what was wrong with it (a missing file raises ``FileNotFoundError``).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from flax_local._src import arguments
from flax_local._src.keras import graph
from flax_local._src.keras.importing import KERAS_CLASSES, from_keras, keras_layout
from flax_local._src.keras.layouts import infer_input_shape
from flax_local._src.keras.objects import check_param_dtype


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading Keras model files needs h5py: pip install h5py (or flax_local[keras])."
        ) from error
    return h5py


def _decode(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _parse_config(path: str, text: Any, where: str) -> dict[str, Any]:
    """The model config JSON at ``where`` in ``path``, or a ValueError naming both."""
    try:
        config = json.loads(_decode(text))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: {where} is not valid JSON ({error}).") from error
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(
            f"{path}: {where} is not a tf_keras model config (a JSON object with 'class_name'), "
            f"got {str(config):.80}."
        )
    return config


class _ModelFile:
    """The config and weight store of a ``.h5`` or ``.keras`` model file."""

    def __init__(self, path: str | os.PathLike[str], *, weights: bool = True):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"no such Keras model file: {self.path!r}.")
        h5py = _h5py()
        self.h5 = None
        if zipfile.is_zipfile(self.path):
            self.format = "keras"
            try:
                with zipfile.ZipFile(self.path) as archive:
                    names = set(archive.namelist())
                    if "config.json" not in names or (weights and "model.weights.h5" not in names):
                        raise ValueError(
                            f"{self.path} is a zip file but not a tf_keras .keras model (it lacks "
                            f"config.json or model.weights.h5; it has {sorted(names)})."
                        )
                    self.config = _parse_config(self.path, archive.read("config.json"), "config.json")
                    data = archive.read("model.weights.h5") if weights else None
            except (zipfile.BadZipFile, OSError, EOFError) as error:
                raise ValueError(f"{self.path}: the .keras zip archive is corrupt ({error}).") from error
            if data is not None:
                try:
                    self.h5 = h5py.File(io.BytesIO(data), "r")
                except OSError as error:
                    raise ValueError(
                        f"{self.path}: model.weights.h5 inside the .keras archive is not a readable HDF5 "
                        f"file ({error})."
                    ) from error
            return
        try:
            self.h5 = h5py.File(self.path, "r")
        except OSError as error:
            raise ValueError(f"{self.path} is neither a .keras zip nor an HDF5 file ({error}).") from error
        try:
            if "model_config" not in self.h5.attrs:
                raise ValueError(
                    f"{self.path} holds no model config (it was probably written by save_weights()); "
                    "save the whole model with model.save(), or convert layers one by one with "
                    "from_keras(layer.get_config(), layer.get_weights(), input_shape)."
                )
            self.config = _parse_config(
                self.path, self.h5.attrs["model_config"], "the model_config attribute"
            )
            self.format = "h5"
        except BaseException:
            self.close()
            raise
        if not weights:
            self.close()

    def close(self) -> None:
        if self.h5 is not None:
            self.h5.close()
            self.h5 = None

    def weights(self, layer: graph.Layer) -> list[np.ndarray]:
        """The weights of ``layer``, in ``get_weights()`` order."""
        try:
            return self._weights(layer.path, layer.keras_path)
        except (OSError, KeyError, TypeError) as error:
            raise ValueError(
                f"{self.path}: cannot read the weights of layer {layer.key!r} ({error})."
            ) from error

    def _weights(self, path: tuple[str, ...], keras_path: str) -> list[np.ndarray]:
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

    Raises:
      ValueError: naming the file, when it is not a tf_keras model file or
        its config is missing or not valid JSON.
      FileNotFoundError: when there is no file at ``path``.

    Example:
      >>> import os, tempfile, zipfile
      >>> path = os.path.join(tempfile.mkdtemp(), "empty.keras")
      >>> with zipfile.ZipFile(path, "w") as z:
      ...     z.writestr("config.json", '{"class_name": "Sequential", "config": {"layers": []}}')
      ...     z.writestr("model.weights.h5", b"")
      >>> read_model_config(path)["class_name"]
      'Sequential'
    """
    return _ModelFile(path, weights=False).config


def load_weights(
    path: str | os.PathLike[str],
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    implementation: str | int | None = None,
    param_dtype: Any = None,
) -> dict[str, tuple[Any, dict[str, dict[str, Any]]]]:
    """Converts every LocallyConnected1D/2D layer of a saved tf_keras model.

    The file is read with h5py (and zipfile); TensorFlow is not needed.
    Each layer's input shape comes, in this order, from ``input_shapes``, from
    the layer's own record (the ``build_config`` of a ``.keras`` file, its
    ``batch_input_shape``), from the model graph, or from its weights where
    they determine it (implementation 2 kernels hold it; implementation 1 in
    1D with stride 1). The graph is walked from the model's ``InputLayer``: a
    LocallyConnected layer's output shape follows from its config, and
    shape-preserving layers (Activation, Dropout, BatchNormalization,
    LayerNormalization, GaussianNoise, ...) pass theirs on, through nested
    models too. A layer behind any other layer (Flatten, Reshape, Dense, ...)
    needs ``input_shapes``.

    Args:
      path: a model file written by tf_keras ``model.save("....h5")`` or
        ``model.save("....keras")``.
      input_shapes: optional input shapes (without batch, in the layer's
        ``data_format``) by layer key, overriding the file.
      implementation: flax_local implementation for every module; default
        (None) keeps each layer's Keras choice.
      param_dtype: the variables' dtype for every module; default (None)
        each layer's Keras dtype (see ``from_keras``).

    Returns:
      ``{key: (module, variables)}`` in the model's layer order, as
      ``from_keras`` returns them. ``key`` is the layer's name, prefixed with
      the names of enclosing models (``"inner_model/layer"``) for nested ones.

    Raises:
      ValueError: naming the file, for a file that is not a readable tf_keras
        model, a layer config without a flax_local equivalent, weights that
        do not fit their config, or a layer whose input shape neither the file
        nor its weights determine (the message names the layer that hides it
        and the ``input_shapes`` entry to pass).
      FileNotFoundError: when there is no file at ``path``.

    Example:
      >>> from flax_local.keras import load_weights
      >>> layers = load_weights("model.keras")  # doctest: +SKIP
      >>> module, variables = layers["locally_connected2d"]  # doctest: +SKIP
      >>> y = module.apply(variables, x)  # doctest: +SKIP
    """
    overrides = dict(input_shapes or {})
    if param_dtype is not None:
        param_dtype = check_param_dtype(param_dtype, "param_dtype")
    model_file = _ModelFile(path)
    try:
        found = list(graph.find_layers(model_file.config))
        unknown = set(overrides) - {layer.key for layer in found} - {layer.path[-1] for layer in found}
        if unknown:
            raise ValueError(
                f"input_shapes names {sorted(unknown)}, which are not LocallyConnected layers of "
                f"{model_file.path} (those are {[layer.key for layer in found]})."
            )
        weights = {layer.key: model_file.weights(layer) for layer in found}
        resolved: dict[str, graph.Shape] = {}

        def input_shape(layer: graph.Layer) -> graph.Shape:
            if layer.key not in resolved:
                resolved[layer.key] = _input_shape(layer, overrides, shapes, weights[layer.key])
            return resolved[layer.key]

        shapes = graph.Shapes(found, input_shape)
        result = {}
        for layer in found:
            try:
                shape = input_shape(layer)
            except graph.UnknownShape as error:
                raise ValueError(
                    f"{model_file.path}: the input shape of layer {layer.key!r} is not recorded in the "
                    f"file and neither the model graph nor its weights determine it ({error}); pass "
                    f"input_shapes={{{layer.key!r}: (...)}} (without batch, in its data_format)."
                ) from None
            try:
                result[layer.key] = from_keras(
                    {"class_name": layer.entry["class_name"], "config": layer.config},
                    weights[layer.key],
                    shape,
                    implementation=implementation,
                    param_dtype=param_dtype,
                )
            except ValueError as error:
                raise ValueError(f"{model_file.path}: layer {layer.key!r}: {error}") from error
        return result
    finally:
        model_file.close()


def _input_shape(
    layer: graph.Layer,
    overrides: Mapping[str, Sequence[int]],
    shapes: graph.Shapes,
    weights: list[np.ndarray],
) -> graph.Shape:
    """A LocallyConnected layer's input shape: given, recorded, from the graph, or from its weights."""
    given = overrides.get(layer.key, overrides.get(layer.path[-1]))
    if given is not None:
        return tuple(given)
    declared = graph.declared_input_shape(layer.entry)
    if declared is not None:
        return declared
    try:
        return shapes.input_shape(layer.scope, layer.entry)
    except graph.UnknownShape:
        inferred = _inferred_input_shape(layer, weights)
        if inferred is None:
            raise
        return inferred


def _inferred_input_shape(layer: graph.Layer, weights: list[np.ndarray]) -> graph.Shape | None:
    if not weights:
        return None
    rank = KERAS_CLASSES[layer.entry["class_name"]]
    config = layer.config
    try:
        shape = infer_input_shape(
            weights[0].shape,
            implementation=int(config.get("implementation", 1)),
            kernel_size=arguments.to_tuple(config["kernel_size"], rank, "kernel_size"),
            strides=arguments.to_tuple(config.get("strides", 1), rank, "strides"),
            padding=config.get("padding", "valid"),
            data_format=config.get("data_format") or "channels_last",
        )
        if shape is not None:
            keras_layout({"class_name": layer.entry["class_name"], "config": config}, shape)
    except (ValueError, TypeError):
        return None
    return shape
