"""Shared by every tier, with no TensorFlow: errors, class names, image decoding, the contract."""
