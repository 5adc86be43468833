"""A trained Keras model as TF Serving versions: SavedModel (+ warm-up) and TFLite."""
