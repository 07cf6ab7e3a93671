"""Migrating from tf_keras: LocallyConnected1D/2D configs, weights and files.

flax_local never imports TensorFlow: this module reads what tf_keras writes
(``layer.get_config()``, ``layer.get_weights()``, ``.h5`` and ``.keras``
model files) with numpy and h5py. ``h5py`` is needed only by
``load_weights``.

Example:
  >>> import numpy as np
  >>> from flax_local import keras
  >>> config = {"filters": 8, "kernel_size": [3, 3], "strides": [1, 1], "padding": "valid",
  ...           "data_format": "channels_last", "activation": "relu", "use_bias": True,
  ...           "implementation": 1}
  >>> kernel = np.zeros((4 * 4, 3 * 3 * 2, 8), np.float32)     # Keras impl 1: (P, k*k*C, F)
  >>> bias = np.zeros((4, 4, 8), np.float32)
  >>> module, variables = keras.from_keras(config, [kernel, bias], input_shape=(6, 6, 2))
  >>> type(module).__name__, variables["params"]["kernel"].shape
  ('LocallyConnected2D', (4, 4, 3, 3, 2, 8))
  >>> [w.shape for w in keras.to_keras(module, variables, (6, 6, 2), implementation=2)]
  [(6, 6, 2, 4, 4, 8), (4, 4, 8)]
"""

from flax_local._src.keras.exporting import to_keras as to_keras
from flax_local._src.keras.exporting import to_keras_config as to_keras_config
from flax_local._src.keras.files import load_weights as load_weights
from flax_local._src.keras.files import read_model_config as read_model_config
from flax_local._src.keras.importing import from_keras as from_keras
from flax_local._src.keras.importing import module_from_keras as module_from_keras
from flax_local._src.keras.layouts import KerasLayout as KerasLayout
from flax_local._src.keras.layouts import keras_output_shape as keras_output_shape
from flax_local._src.keras.layouts import keras_padding as keras_padding
from flax_local._src.keras.objects import activation_from_keras as activation_from_keras
from flax_local._src.keras.objects import constraint_from_keras as constraint_from_keras
from flax_local._src.keras.objects import dtypes_from_keras as dtypes_from_keras
from flax_local._src.keras.objects import initializer_from_keras as initializer_from_keras
from flax_local._src.keras.objects import regularizer_from_keras as regularizer_from_keras

__all__ = [
    "KerasLayout",
    "activation_from_keras",
    "constraint_from_keras",
    "dtypes_from_keras",
    "from_keras",
    "initializer_from_keras",
    "keras_output_shape",
    "keras_padding",
    "load_weights",
    "module_from_keras",
    "read_model_config",
    "regularizer_from_keras",
    "to_keras",
    "to_keras_config",
]
