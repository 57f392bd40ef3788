"""Attention methods for transformers: attention rollout and gradient-weighted rollout."""

from .rollout import attention_rollout, grad_rollout, gradient_rollout, rollout  # noqa: F401
