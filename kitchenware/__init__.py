"""Kitchenware: classify photos of kitchen items, from Kaggle data to a served model."""

__version__ = "0.1.0"
