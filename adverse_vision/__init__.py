"""adverse_vision: joint low-level and high-level vision under adverse conditions, in JAX."""

__version__ = "0.1.0"
