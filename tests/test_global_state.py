"""Library calls leave process-wide state as they found it: torch's and Python's random
streams, and the Hugging Face hub settings."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch
from torch import nn

import saliencelab as sl
from saliencelab.models import shapes, vit


@pytest.mark.parametrize("name", ["shapes_cnn", "shapes_vit", "tiny_vit"])
def test_loading_a_packaged_model_does_not_move_torchs_stream(name):
    """The module was built with default initialisation from the global generator before its
    weights were loaded: a user's seeded nn.Linear after a load got other weights."""
    torch.manual_seed(0)
    expected = nn.Linear(4, 2).weight.detach().clone()
    torch.manual_seed(0)
    sl.load_model(name)
    assert torch.equal(nn.Linear(4, 2).weight, expected) and torch.initial_seed() == 0


def test_training_helpers_seed_their_own_stream():
    torch.manual_seed(123)
    after = torch.get_rng_state()
    shapes.train("shapes_cnn", steps=1, held_out=0)
    vit.train_tiny_vit(steps=1)
    assert torch.initial_seed() == 123 and torch.equal(torch.get_rng_state(), after)


def _fresh(code: str) -> str:
    """stdout of `code` run in a new interpreter (imports happen there for the first time)."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    return done.stdout.strip()


def test_the_first_visualize_does_not_move_pythons_random_stream():
    """Importing rich (the progress bar) draws from Python's `random` at import time."""
    code = (
        "import random, saliencelab as sl\n"
        "m = sl.load_model('shapes_cnn')\n"
        "random.seed(0); a = random.random(); random.seed(0)\n"
        "sl.visualize(m, 0, steps=1, size=32)\n"
        "print(random.random() == a)"
    )
    assert _fresh(code) == "True"


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs the text extra")
def test_loading_a_text_model_leaves_the_hub_online():
    """HF_HUB_OFFLINE=1 was set for good, so a user's own hub downloads were off after it."""
    code = (
        "import os, saliencelab as sl\n"
        "sl.load_model('minilm')\n"
        "import huggingface_hub\n"
        "print(os.environ.get('HF_HUB_OFFLINE'), huggingface_hub.constants.HF_HUB_OFFLINE)"
    )
    assert _fresh(code) == "None False"
