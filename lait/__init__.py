"""LAIT: turn the open web into ImageBERT pretraining data, and train ImageBERT on it."""

__version__ = "0.1.0"
