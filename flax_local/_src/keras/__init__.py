"""tf_keras LocallyConnected layers to flax_local and back: objects, import, export, layouts, files."""
