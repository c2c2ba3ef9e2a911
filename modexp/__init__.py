"""modexp: isoFLOP experiments for Mixture-of-Depths transformers."""

__version__ = "0.1.0"
