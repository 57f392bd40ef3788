"""Relevance methods: layer-wise relevance propagation and DeepLIFT, registered on import."""

from . import deeplift, lrp  # noqa: F401
