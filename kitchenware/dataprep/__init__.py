"""Kaggle data in, deduplicated train/val/test folders out (`kitchenware prep`, `sample-data`)."""
