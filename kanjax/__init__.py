"""kanjax: Kolmogorov-Arnold Network layers in JAX/Flax NNX, inside SmolLM2."""

__version__ = "0.1.0"
