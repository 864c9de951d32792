"""Declarative YAML kernel specs to readable JAX Pallas TPU modules."""

__version__ = "0.1.0"
