"""A tiny vision transformer and the synthetic task it learns in seconds (for tests and demos).

`TinyViT` is a standard ViT (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021):
patches → linear embedding (a Conv2d with kernel = stride = patch size), a class token and
optional register tokens in front (Darcet et al. 2024), learned position embeddings, pre-norm
blocks x ← x + Attn(LN(x)); x ← x + MLP(LN(x)), a final LayerNorm and a linear head on the class
token. Its attention follows timm's layout (`qkv`, `attn_drop`, `proj`, a `fused_attn` switch
between `scaled_dot_product_attention` and the explicit softmax(QKᵀ/√d)·V), so it exercises the
same code paths as timm models.

The task (:func:`shapes_on_noise`): one bright shape (a filled square, a frame, a cross or an x)
at a random place on Gaussian noise; the class is the shape. The object is the only evidence and
its position is known, so a saliency map can be scored by whether its peak falls on it (the
pointing game). :func:`train_tiny_vit` trains the model on it in about 15 s on one CPU thread
(seeded); `scripts/train_tiny_vit.py` runs it from the command line.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import SaliencelabError
from ..core.seeds import own_global_rng
from .model import Model

SHAPES = ("square", "frame", "cross", "x")

# Weights of `TinyViT()` trained by `scripts/train_tiny_vit.py` (defaults: 300 steps, seed 0).
WEIGHTS_FILE = Path(__file__).resolve().parent.parent / "data" / "tiny_vit_shapes.pt"


class Attention(nn.Module):
    """Multi-head self-attention, timm's layout: A = softmax(Q Kᵀ / √d_head), out = proj(A V)."""

    def __init__(self, dim: int, heads: int, fused_attn: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.fused_attn = fused_attn
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            out = self.attn_drop(attn) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """A small ViT: [class, registers…, patches] tokens → blocks → LayerNorm → head(class token)."""

    def __init__(
        self,
        image_size: int | tuple[int, int] = 32,
        patch_size: int = 4,
        dim: int = 32,
        depth: int = 2,
        heads: int = 2,
        classes: int = len(SHAPES),
        registers: int = 0,
        in_channels: int = 3,
        pool: str = "token",
        class_token: bool = True,
    ) -> None:
        super().__init__()
        if pool not in ("token", "avg") or (pool == "token" and not class_token):
            raise ValueError(f"pool must be 'token' (with a class token) or 'avg', not {pool!r}")
        self.pool = pool
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.grid = (h // patch_size, w // patch_size)
        self.num_prefix_tokens = int(class_token) + registers  # timm's name
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, registers, dim)) if registers else None
        n_tokens = self.num_prefix_tokens + self.grid[0] * self.grid[1]
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, n_tokens, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The input tokens (B, T, D): class, registers, then patches row by row, + positions."""
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)
        prefix = [] if self.cls_token is None else [self.cls_token.expand(x.shape[0], -1, -1)]
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(x.shape[0], -1, -1))
        return torch.cat([*prefix, patches], dim=1) + self.pos_embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.blocks(self.tokens(x)))
        pooled = x[:, 0] if self.pool == "token" else x[:, self.num_prefix_tokens :].mean(dim=1)
        return self.head(pooled)


def shape_masks(side: int = 8) -> torch.Tensor:
    """(4, side, side) boolean masks of the classes in :data:`SHAPES` (bars 2 pixels wide)."""
    i = torch.arange(side)
    r, c = i[:, None], i[None, :]
    mid = (i >= side // 2 - 1) & (i < side // 2 + 1)
    return torch.stack(
        [
            torch.ones(side, side, dtype=torch.bool),
            (r < 2) | (r >= side - 2) | (c < 2) | (c >= side - 2),
            mid[:, None] | mid[None, :],
            ((r - c).abs() <= 1) | ((r + c - (side - 1)).abs() <= 1),
        ]
    )


def shapes_on_noise(
    n: int, size: int = 32, side: int = 8, noise: float = 0.5, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`n` images (n, 3, size, size) of N(0, noise²) pixels with one shape (value 2, `side`
    pixels wide) placed uniformly at random; the class is the shape (index into :data:`SHAPES`).
    Returns images, classes, and boxes (n, 4) as xyxy pixels (left, top, right, bottom), right
    and bottom exclusive, as `sl.data.shapes` boxes: where the object, the only evidence of the
    class, is."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(SHAPES), (n,), generator=g)
    top = torch.randint(0, size - side + 1, (n,), generator=g)
    left = torch.randint(0, size - side + 1, (n,), generator=g)
    images = noise * torch.randn(n, 3, size, size, generator=g)
    canvas = torch.zeros(n, size + side, size + side, dtype=torch.bool)
    rows = top[:, None, None] + torch.arange(side)[None, :, None]
    cols = left[:, None, None] + torch.arange(side)[None, None, :]
    canvas[torch.arange(n)[:, None, None], rows, cols] = shape_masks(side)[labels]
    mask = canvas[:, :size, :size]
    images = torch.where(mask[:, None], torch.full_like(images, 2.0), images)
    boxes = torch.stack([left, top, left + side, top + side], dim=1)  # xyxy
    return images, labels, boxes


def tiny_vit_model(module: TinyViT, name: str = "tiny_vit") -> Model:
    """`module` wrapped as an `sl.Model` with the shape labels."""
    size = (
        module.grid[0] * module.patch_embed.stride[0],
        module.grid[1] * module.patch_embed.stride[1],
    )
    return Model(module=module.eval(), labels=list(SHAPES), name=name, input_size=size)


def tiny_vit(pretrained: bool = True) -> Model:
    """The tiny ViT as an `sl.Model`, with the shipped weights (`pretrained=False`: random)."""
    module = TinyViT()
    if pretrained:
        if not WEIGHTS_FILE.is_file():
            raise SaliencelabError(
                f"The tiny ViT's weights are missing ({WEIGHTS_FILE}); run "
                "scripts/train_tiny_vit.py to make them, or use pretrained=False."
            )
        module.load_state_dict(torch.load(WEIGHTS_FILE, map_location="cpu", weights_only=True))
    return tiny_vit_model(module)


@own_global_rng  # seeds torch's generator for itself, not for the caller
def train_tiny_vit(
    steps: int = 300,
    batch: int = 64,
    seed: int = 0,
    lr: float = 3e-3,
    verbose: bool = False,
    **config: Any,
) -> Model:
    """A :class:`TinyViT` (`config`: its constructor's options) trained on
    :func:`shapes_on_noise`, seeded: AdamW, one-cycle cosine schedule, a fresh batch each step.

    About 15 s on one CPU thread at the defaults; the returned model's `extra` holds the
    accuracy on 512 held-out images (`"accuracy"`) and the training time (`"train_seconds"`).
    """
    torch.manual_seed(seed)
    module = TinyViT(**config)
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    start = time.perf_counter()
    module.train()
    for step in range(steps):
        images, labels, _ = shapes_on_noise(batch, seed=(seed + 1) * 1_000_003 + step)
        loss = F.cross_entropy(module(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if verbose and step % 25 == 0:
            print(f"step {step:4d}  loss {loss.item():.3f}")
    seconds = time.perf_counter() - start
    module.eval()
    test_x, test_y, _ = shapes_on_noise(512, seed=(seed + 2) * 1_000_003 - 1)
    with torch.no_grad():
        accuracy = (module(test_x).argmax(1) == test_y).float().mean().item()
    model = tiny_vit_model(module)
    model.extra.update(accuracy=accuracy, train_seconds=seconds)
    return model
