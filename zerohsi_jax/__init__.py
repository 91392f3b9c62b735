"""zerohsi-jax: ZeroHSI (zero-shot 4D human-scene interaction by video generation) in JAX."""

__version__ = "0.1.0"
