"""Attention rollout and gradient rollout against their matrix definitions, computed by hand.

Every reference below recomputes the attention matrices from the model's weights (or takes them
from Hugging Face's own `output_attentions`), never from saliencelab's hooks, and applies the
formulas with explicit per-sample loops.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import saliencelab as sl
from saliencelab.core.context import upsample
from saliencelab.core.errors import SaliencelabError
from saliencelab.models.vit import TinyViT

torch.set_grad_enabled(True)


# -- references ---------------------------------------------------------------------------------


def rollout_by_hand(attentions, fusion="mean", discard=0.0):
    """Per sample: R = Π_l rownorm(0.5·fuse(A_l) + 0.5·I), first layer rightmost."""
    out = []
    for b in range(attentions[0].shape[0]):
        t = attentions[0].shape[-1]
        r = torch.eye(t, dtype=torch.float64)
        for a in attentions:
            heads = a[b].double()
            fused = {"mean": heads.mean(0), "max": heads.max(0).values, "min": heads.min(0).values}[
                fusion
            ]
            k = int(t * t * discard)
            if k:
                order = fused.flatten().argsort()[:k]  # the k smallest
                flat = fused.flatten().clone()
                for i in order.tolist():
                    if i != 0:  # the class token's attention to itself is kept
                        flat[i] = 0.0
                fused = flat.view(t, t)
            step = 0.5 * fused + 0.5 * torch.eye(t, dtype=torch.float64)
            step = step / step.sum(dim=1, keepdim=True)
            r = step @ r
        out.append(r)
    return torch.stack(out)


def grad_rollout_by_hand(attentions, grads, normalize=False):
    """Per sample: R = Π_l (I + mean_h[(∇A_l ⊙ A_l)⁺]), first layer rightmost."""
    out = []
    for b in range(attentions[0].shape[0]):
        t = attentions[0].shape[-1]
        r = torch.eye(t, dtype=torch.float64)
        for a, g in zip(attentions, grads, strict=True):
            a_bar = (g[b].double() * a[b].double()).clamp(min=0).mean(0)
            step = torch.eye(t, dtype=torch.float64) + a_bar
            if normalize:
                step = step / step.sum(dim=1, keepdim=True)
            r = step @ r
        out.append(r)
    return torch.stack(out)


def tiny_vit_by_hand(model: TinyViT, x):
    """TinyViT's forward written out, returning the logits and every attention matrix."""
    h = model.tokens(x)
    attentions = []
    for blk in model.blocks:
        y = blk.norm1(h)
        b, t, d = y.shape
        nh = blk.attn.heads
        qkv = y @ blk.attn.qkv.weight.T + blk.attn.qkv.bias
        q, k, v = (
            qkv[..., i * d : (i + 1) * d].view(b, t, nh, d // nh).transpose(1, 2) for i in range(3)
        )
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // nh), dim=-1)
        a.retain_grad()
        attentions.append(a)
        h = h + blk.attn.proj((a @ v).transpose(1, 2).reshape(b, t, d))
        h = h + blk.mlp(blk.norm2(h))
    return model.head(model.norm(h)[:, 0]), attentions


class MHAViT(nn.Module):
    """A ViT built on nn.TransformerEncoderLayer (nn.MultiheadAttention), torchvision-style."""

    def __init__(self, dim=16, depth=2, heads=2, patch=4, size=16, classes=3):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.class_token = nn.Parameter(0.5 * torch.randn(1, 1, dim))
        self.pos = nn.Parameter(0.5 * torch.randn(1, 1 + (size // patch) ** 2, dim))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True
            )
            for _ in range(depth)
        )
        self.head = nn.Linear(dim, classes)

    def tokens(self, x):
        p = self.patch_embed(x).flatten(2).transpose(1, 2)
        return torch.cat([self.class_token.expand(x.shape[0], -1, -1), p], 1) + self.pos

    def forward(self, x):
        h = self.tokens(x)
        for layer in self.layers:
            h = layer(h)
        return self.head(h[:, 0])


def mha_vit_by_hand(model: MHAViT, x):
    h = model.tokens(x)
    attentions = []
    for layer in model.layers:
        mha = layer.self_attn
        y = layer.norm1(h)
        b, t, d = y.shape
        nh = mha.num_heads
        qkv = y @ mha.in_proj_weight.T + mha.in_proj_bias
        q, k, v = (
            qkv[..., i * d : (i + 1) * d].view(b, t, nh, d // nh).transpose(1, 2) for i in range(3)
        )
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // nh), dim=-1)
        a.retain_grad()
        attentions.append(a)
        h = h + mha.out_proj((a @ v).transpose(1, 2).reshape(b, t, d))
        h = h + layer.linear2(F.relu(layer.linear1(layer.norm2(h))))
    return model.head(h[:, 0]), attentions


def class_row_map(r, grid, prefix=1):
    return r[:, 0, prefix:].reshape(r.shape[0], *grid).float()


def grads_of(logits, attentions, target):
    logits.gather(1, target[:, None]).sum().backward()
    return [a.grad for a in attentions]


@pytest.fixture
def toy_vit():
    torch.manual_seed(0)
    model = TinyViT(image_size=16, patch_size=4, dim=16, depth=2, heads=2, classes=3).eval()
    with torch.no_grad():  # make attention far from uniform
        for blk in model.blocks:
            blk.attn.qkv.weight.mul_(4.0)
    return model


@pytest.fixture
def x16():
    torch.manual_seed(1)
    return torch.randn(3, 3, 16, 16)


# -- the timm-style toy transformer (TinyViT, 2 layers) -----------------------------------------


def test_manual_forward_is_the_model(toy_vit, x16):
    logits, _ = tiny_vit_by_hand(toy_vit, x16)
    torch.testing.assert_close(logits, toy_vit(x16), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("fusion", "discard"), [("mean", 0.0), ("max", 0.0), ("min", 0.0), ("mean", 0.5), ("max", 0.9)]
)
def test_rollout_is_its_matrix_definition(toy_vit, x16, fusion, discard):
    _, attentions = tiny_vit_by_hand(toy_vit, x16)
    expected = class_row_map(
        rollout_by_hand([a.detach() for a in attentions], fusion, discard), (4, 4)
    )
    ex = sl.explain(
        toy_vit, x16, methods="attention_rollout", head_fusion=fusion, discard_ratio=discard
    )
    got = ex["attention_rollout"]
    torch.testing.assert_close(got.maps, upsample(expected, (16, 16)), atol=1e-5, rtol=1e-4)
    assert got.forwards == 1 and got.passes == 0
    assert got.attention_layers == 2


def test_grad_rollout_is_its_formula(toy_vit, x16):
    target = torch.tensor([0, 2, 1])
    logits, attentions = tiny_vit_by_hand(toy_vit, x16)
    grads = grads_of(logits, attentions, target)
    for normalize in (False, True):
        r = grad_rollout_by_hand([a.detach() for a in attentions], grads, normalize)
        ex = sl.explain(toy_vit, x16, methods="grad_rollout", target=target, normalize=normalize)
        torch.testing.assert_close(
            ex["grad_rollout"].maps,
            upsample(class_row_map(r, (4, 4)), (16, 16)),
            atol=1e-5,
            rtol=1e-4,
        )
        assert ex["grad_rollout"].passes == 1


def test_grad_rollout_is_class_specific(toy_vit, x16):
    a = sl.explain(toy_vit, x16, methods="grad_rollout", target=0)["grad_rollout"].maps
    b = sl.explain(toy_vit, x16, methods="grad_rollout", target=1)["grad_rollout"].maps
    assert not torch.allclose(a, b)


def test_fused_attention_restored_after_the_call_and_after_an_error(toy_vit, x16):
    assert all(blk.attn.fused_attn for blk in toy_vit.blocks)
    before = toy_vit(x16)
    sl.explain(toy_vit, x16, methods=["attention_rollout", "grad_rollout"])
    assert all(blk.attn.fused_attn for blk in toy_vit.blocks)

    def boom(logits):
        raise RuntimeError("target failed")

    for method in ("attention_rollout", "grad_rollout"):
        with pytest.raises(RuntimeError, match="target failed"):  # inside the pass
            sl.explain(toy_vit, x16, methods=method, target=boom)
        assert all(blk.attn.fused_attn for blk in toy_vit.blocks)
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in toy_vit.modules())
        with pytest.raises(SaliencelabError, match="row=99 is out of range"):  # after a chunk
            sl.explain(toy_vit, x16, methods={method: {"row": 99}})
        assert all(blk.attn.fused_attn for blk in toy_vit.blocks)
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in toy_vit.modules())
    torch.testing.assert_close(toy_vit(x16), before)


# -- nn.MultiheadAttention (nn.TransformerEncoderLayer, as in torchvision's ViT) ----------------


@pytest.fixture
def mha_vit():
    torch.manual_seed(2)
    model = MHAViT().eval()
    with torch.no_grad():
        for layer in model.layers:
            layer.self_attn.in_proj_weight.mul_(4.0)
    return model


def test_mha_rollouts_are_their_definitions(mha_vit, x16):
    logits, attentions = mha_vit_by_hand(mha_vit, x16)
    torch.testing.assert_close(logits, mha_vit(x16), atol=1e-5, rtol=1e-5)
    target = logits.argmax(1)
    grads = grads_of(logits, attentions, target)
    ex = sl.explain(mha_vit, x16, methods=["attention_rollout", "grad_rollout"])
    rollout = class_row_map(rollout_by_hand([a.detach() for a in attentions]), (4, 4))
    grad = class_row_map(grad_rollout_by_hand([a.detach() for a in attentions], grads), (4, 4))
    torch.testing.assert_close(
        ex["attention_rollout"].maps, upsample(rollout, (16, 16)), atol=1e-5, rtol=1e-4
    )
    torch.testing.assert_close(
        ex["grad_rollout"].maps, upsample(grad, (16, 16)), atol=1e-5, rtol=1e-4
    )


def test_mha_state_restored_and_callers_get_what_they_asked(mha_vit, x16):
    fastpath = torch.backends.mha.get_fastpath_enabled()

    def boom(logits):
        raise RuntimeError("target failed")

    with pytest.raises(RuntimeError, match="target failed"):
        sl.explain(mha_vit, x16, methods="attention_rollout", target=boom)
    assert torch.backends.mha.get_fastpath_enabled() == fastpath
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in mha_vit.modules())

    class Caller(nn.Module):  # asks for head-averaged weights, as nn.MultiheadAttention's default
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 2)
            self.seen = []

        def forward(self, x):
            out, w = self.attn(x, x, x)
            self.seen.append(w)
            return self.head(out[:, 0])

    torch.manual_seed(3)
    caller, tokens = Caller().eval(), torch.randn(2, 5, 8)
    expected = caller.attn(tokens, tokens, tokens)[1]
    sl.explain(caller, tokens, methods="attention_rollout")
    torch.testing.assert_close(caller.seen[-1], expected)  # (B, T, T), averaged as requested


# -- Hugging Face ViT (random weights, no download) -----------------------------------------------


@pytest.fixture
def hf_vit():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(4)
    config = transformers.ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    return transformers.ViTForImageClassification(config).eval()


def test_hf_rollouts_equal_rollouts_of_hf_own_attentions(hf_vit, x16):
    implementation = hf_vit.config._attn_implementation
    hf_vit.set_attn_implementation("eager")
    out = hf_vit(pixel_values=x16, output_attentions=True)
    attentions = list(out.attentions)
    for a in attentions:
        a.retain_grad()
    target = out.logits.argmax(1)
    grads = grads_of(out.logits, attentions, target)
    hf_vit.set_attn_implementation(implementation)

    ex = sl.explain(hf_vit, x16, methods=["attention_rollout", "grad_rollout", "gradcam"])
    rollout = class_row_map(rollout_by_hand([a.detach() for a in attentions]), (4, 4))
    grad = class_row_map(grad_rollout_by_hand([a.detach() for a in attentions], grads), (4, 4))
    torch.testing.assert_close(
        ex["attention_rollout"].maps, upsample(rollout, (16, 16)), atol=1e-5, rtol=1e-4
    )
    torch.testing.assert_close(
        ex["grad_rollout"].maps, upsample(grad, (16, 16)), atol=1e-5, rtol=1e-4
    )
    assert ex["gradcam"].layer.endswith("1.layernorm_before")
    assert ex["gradcam"].maps.shape == (3, 16, 16)
    assert hf_vit.config._attn_implementation == implementation


def test_hf_attention_implementation_restored_when_the_call_raises(hf_vit, x16):
    implementation = hf_vit.config._attn_implementation
    assert implementation != "eager"

    def boom(logits):
        raise RuntimeError("target failed")

    for method in ("attention_rollout", "grad_rollout"):
        with pytest.raises(RuntimeError, match="target failed"):
            sl.explain(hf_vit, x16, methods=method, target=boom)
        assert hf_vit.config._attn_implementation == implementation


# -- tokens (text): per-token scores (B, T) --------------------------------------------------------


class TokenClassifier(nn.Module):
    """Token ids → embeddings → 2 MultiheadAttention layers → class token → logits."""

    def __init__(self, vocab=20, dim=16, heads=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True
            )
            for _ in range(2)
        )
        self.head = nn.Linear(dim, 2)

    def forward(self, ids):
        h = self.embed(ids)
        for layer in self.layers:
            h = layer(h)
        return self.head(h[:, 0])


def _by_hand(model: TokenClassifier):
    """What `mha_vit_by_hand` needs of a model, for the token classifier."""
    return SimpleNamespace(tokens=model.embed, layers=model.layers, head=model.head)


def test_token_inputs_give_one_score_per_token():
    torch.manual_seed(5)
    model = TokenClassifier().eval()
    ids = torch.randint(0, 20, (2, 7))

    logits, attentions = mha_vit_by_hand(_by_hand(model), ids)
    grads = grads_of(logits, attentions, logits.argmax(1))
    ex = sl.explain(model, ids, methods=["attention_rollout", "grad_rollout"])
    rollout = rollout_by_hand([a.detach() for a in attentions])[:, 0].float()
    grad = grad_rollout_by_hand([a.detach() for a in attentions], grads)[:, 0].float()
    assert ex["attention_rollout"].maps.shape == (2, 7)
    torch.testing.assert_close(ex["attention_rollout"].maps, rollout, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ex["grad_rollout"].maps, grad, atol=1e-5, rtol=1e-4)


# -- bad input ------------------------------------------------------------------------------------


def test_a_model_without_attention_is_one_clear_sentence(tiny_cnn, images):
    for method in ("attention_rollout", "grad_rollout"):
        with pytest.raises(SaliencelabError, match="no attention layer") as err:
            sl.explain(tiny_cnn, images, methods=method)
        assert str(err.value).count(". ") == 0 and str(err.value).endswith(".")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"head_fusion": "median"}, "head_fusion must be one of"),
        ({"discard_ratio": 1.0}, r"discard_ratio must be in \[0, 1\)"),
        ({"row": "first"}, "row must be"),
    ],
)
def test_bad_options(toy_vit, x16, options, message):
    with pytest.raises(SaliencelabError, match=message):
        sl.explain(toy_vit, x16, methods={"attention_rollout": options})


def test_mean_row_over_real_tokens_for_mean_pooled_models():
    torch.manual_seed(6)
    model = TokenClassifier().eval()
    ids = torch.tensor([[3, 4, 5, 6, 0, 0], [7, 8, 9, 10, 11, 12]])  # 0 = padding
    shaped = sl.Model(model, extra={"rollout_row": "mean", "token_mask": lambda x: x != 0})
    got = sl.explain(shaped, ids, methods="attention_rollout")["attention_rollout"].maps
    _, attentions = mha_vit_by_hand(_by_hand(model), ids)
    r = rollout_by_hand([a.detach() for a in attentions])
    mask = (ids != 0).double()
    expected = (mask[:, :, None] * r).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(got, expected.float(), atol=1e-5, rtol=1e-4)


def test_images_without_a_class_token_roll_out_the_mean_of_the_rows(x16):
    """An average-pooled ViT has no class token in front of its patches, so row="auto" is the
    mean of R's rows (as row="mean", no token mask: every token is a patch); row=0 is the first
    patch's own row. Reference: rollout_by_hand on attentions recomputed from the weights."""
    torch.manual_seed(7)
    model = TinyViT(
        image_size=16,
        patch_size=4,
        dim=16,
        depth=2,
        heads=2,
        classes=3,
        pool="avg",
        class_token=False,
    ).eval()
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.qkv.weight.mul_(4.0)
    _, attentions = tiny_vit_by_hand(model, x16)
    r = rollout_by_hand([a.detach() for a in attentions])  # (3, 16, 16): patches only
    mean_rows = upsample(r.mean(dim=1).reshape(3, 4, 4).float(), (16, 16))
    first_row = upsample(r[:, 0].reshape(3, 4, 4).float(), (16, 16))
    assert not torch.allclose(mean_rows, first_row, atol=1e-3)
    for row, expected in (("auto", mean_rows), ("mean", mean_rows), (0, first_row)):
        ex = sl.explain(model, x16, methods={"attention_rollout": {"row": row}})
        torch.testing.assert_close(
            ex["attention_rollout"].maps, expected, atol=1e-5, rtol=1e-4, msg=f"row={row!r}"
        )


def test_grad_rollout_normalize_must_be_a_bool(toy_vit):
    """normalize="no" is refused rather than read as True."""
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(SaliencelabError, match="normalize must be True or False"):
        sl.explain(toy_vit, x, methods={"grad_rollout": {"normalize": "no"}})

    def run(n):
        return sl.explain(toy_vit, x, methods={"grad_rollout": {"normalize": n}})

    assert torch.equal(run(1)["grad_rollout"].maps, run(True)["grad_rollout"].maps)
