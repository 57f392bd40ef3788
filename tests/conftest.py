"""Tiny models built in the tests: no downloads."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn


@pytest.fixture
def runner():
    """The CLI's test runner: a wide terminal (tables unwrapped), no debug tracebacks."""
    from typer.testing import CliRunner

    return CliRunner(env={"COLUMNS": "200", "SALIENCELAB_DEBUG": None})


@pytest.fixture
def write_bed(tmp_path):
    """`write_bed(names, data)`: the test-bed images of `data` (`sl.data.shapes.make`) as PNGs
    named `names` in tmp_path/imgs, their object masks 0/255 in tmp_path/masks; returns both
    folders (what `saliencelab evaluate IMAGES --masks DIR` reads)."""
    import numpy as np
    from PIL import Image

    def write(names, data):
        imgs, masks = tmp_path / "imgs", tmp_path / "masks"
        imgs.mkdir()
        masks.mkdir()
        for name, image, mask in zip(names, data.images, data.masks, strict=True):
            pixels = (image.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(imgs / f"{name}.png")
            Image.fromarray((mask.numpy() > 0).astype(np.uint8) * 255).save(masks / f"{name}.png")
        return imgs, masks

    return write


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    tiny models run as fast on one, and on a loaded 2-core machine two threads spin against each
    other (~10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyCNN(nn.Module):
    """conv → ReLU → conv → ReLU → global average pool → linear."""

    def __init__(self, classes: int = 5, channels: int = 6) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class TwiceConv(nn.Module):
    """One convolution applied twice (shared weights): a layer with two calls per forward."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.shared = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.shared(torch.tanh(self.stem(x)))
        h = self.shared(torch.tanh(h))
        return self.fc(h.mean((2, 3)))


@pytest.fixture
def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN().eval()


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(4, 3, 12, 12)


@pytest.fixture(scope="session")
def sync_count():
    """benchmarks/sync_count.py, whose counter finds what would make a chunk wait for a GPU."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "sync_count.py"
    spec = importlib.util.spec_from_file_location("sync_count", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["sync_count"] = module
    spec.loader.exec_module(module)
    return module


#: A factory file defining a tiny CNN (`build()`), for tests that load a model from a spec.
CNN_FACTORY = textwrap.dedent(
    """
    import torch
    from torch import nn


    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(self.pool(self.features(x)).flatten(1))


    def build():
        torch.manual_seed(0)
        return CNN()
    """
)


@pytest.fixture(scope="session")
def classifier_dir(tmp_path_factory):
    """A tiny BERT sentiment classifier ("negative", "positive") saved with its tokenizer, built
    offline with test_text.py's helpers (the text tests share it)."""
    pytest.importorskip("transformers")
    from test_text import _bert_config, _tokenizer
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    config = _bert_config(id2label={0: "negative", 1: "positive"})
    path = tmp_path_factory.mktemp("bert-cls")
    BertForSequenceClassification(config).eval().save_pretrained(path)
    _tokenizer(bert=True).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory):
    """A tiny GPT-2 language model saved with its tokenizer (test_text.py's helpers)."""
    pytest.importorskip("transformers")
    from test_text import _gpt2_config, _tokenizer
    from transformers import GPT2LMHeadModel

    torch.manual_seed(2)
    path = tmp_path_factory.mktemp("gpt2")
    GPT2LMHeadModel(_gpt2_config()).eval().save_pretrained(path)
    _tokenizer(bert=False).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def gpt2_classifier_dir(tmp_path_factory):
    """A decoder's sequence classifier: it scores the last position (HF finds the last real
    token from input_ids, which an embeddings-fed model does not have)."""
    pytest.importorskip("transformers")
    from test_text import _gpt2_config, _tokenizer
    from transformers import GPT2ForSequenceClassification

    torch.manual_seed(3)
    config = _gpt2_config(pad_token_id=0, id2label={0: "negative", 1: "positive"})
    path = tmp_path_factory.mktemp("gpt2-cls")
    GPT2ForSequenceClassification(config).eval().save_pretrained(path)
    _tokenizer(bert=False).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def classifier(classifier_dir):
    """The tiny BERT classifier loaded (`classifier_dir`)."""
    import saliencelab as sl

    return sl.load_model(f"hf:{classifier_dir}")
