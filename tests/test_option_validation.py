"""Method options refused in one sentence, defaults reached by None, options given on the command
line as pairs and dicts, and random draws that do not depend on the model's dtype.

Each check compares with a reference: another call (the default, the float32 model), a formula
(`sample_seeds`' SHA-1), or the message a sibling option already gives.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import saliencelab as sl
from saliencelab.cli import app
from saliencelab.cli_common import parse_options, parse_value
from saliencelab.core.errors import SaliencelabError
from saliencelab.core.seeds import sample_seeds

torch.set_grad_enabled(True)


@pytest.fixture(scope="module")
def cnn():
    return sl.load_model("shapes_cnn")


@pytest.fixture(scope="module")
def vit():
    return sl.load_model("shapes_vit")


@pytest.fixture(scope="module")
def x(cnn):
    return cnn.preprocess(sl.data.shapes.make(2, seed=0))


def explain(model, x, method, **options):
    return sl.explain(model, x, methods={method: options})[method]


def refused(model, x, method, match, **options):
    with pytest.raises(SaliencelabError, match=match) as info:
        explain(model, x, method, **options)
    assert "\n" not in str(info.value)


# -- 1. rollout: discard_ratio and row ----------------------------------------------------------


@pytest.mark.parametrize("ratio", ["x", None, True, float("nan"), 1.0, -0.1])
def test_rollout_discard_ratio_that_is_no_fraction_is_refused(vit, x, ratio):
    refused(vit, x, "attention_rollout", r"discard_ratio must be in \[0, 1\)", discard_ratio=ratio)


@pytest.mark.parametrize("method", ["attention_rollout", "grad_rollout"])
def test_rollout_negative_rows_count_from_the_end_and_the_range_says_so(vit, x, method):
    tokens = 65  # the class token and 8 × 8 patches
    last = explain(vit, x, method, row=tokens - 1).maps
    torch.testing.assert_close(explain(vit, x, method, row=-1).maps, last, rtol=0, atol=0)
    for row in (tokens, -tokens - 1):
        refused(vit, x, method, "give 0 to 64, or -65 to -1 to count from the end", row=row)


# -- 2. bools are not numbers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, options, match",
    [
        ("rise", {"p_keep": True, "n_masks": 8}, r"p_keep must be a probability in \(0, 1\]"),
        ("feature_ablation", {"n_segments": True}, "n_segments must be an integer"),
        ("lime", {"n_segments": True, "n_samples": 8}, "n_segments must be an integer"),
        ("kernelshap", {"n_segments": True}, "n_segments must be an integer"),
    ],
)
def test_a_bool_is_refused_where_a_number_is_expected(cnn, x, method, options, match):
    refused(cnn, x, method, f"{method}: {match}", **options)


def test_default_feature_mask_refuses_a_bool_n_segments(x):
    from saliencelab.methods.perturbation.features import default_feature_mask

    with pytest.raises(SaliencelabError, match="n_segments must be a positive int"):
        default_feature_mask(x, "grid", True)


# -- 3. blur_sigma is checked whatever the baseline ---------------------------------------------


@pytest.mark.parametrize(
    "method, sigma",
    [
        ("integrated_gradients", "x"),
        ("deeplift", -1.0),
        ("occlusion", None),
        ("feature_ablation", float("nan")),
        ("lime", True),
        ("kernelshap", float("inf")),
    ],
)
def test_blur_sigma_is_checked_also_when_the_baseline_is_not_blur(cnn, x, method, sigma):
    match = f"{method}: blur_sigma must be a finite non-negative number of pixels"
    refused(cnn, x, method, match, blur_sigma=sigma)


def test_smoothgrad_noise_level_is_checked_also_when_stdevs_overrides_it(cnn, x):
    refused(cnn, x, "smoothgrad", "noise_level must be", noise_level="x", stdevs=0.1)


# -- 4. VarGrad needs two samples -----------------------------------------------------------------


def test_vargrad_of_one_sample_is_refused(cnn, x):
    refused(cnn, x, "vargrad", "vargrad: n_samples must be an integer of at least 2", n_samples=1)
    assert explain(cnn, x, "vargrad", n_samples=2).maps.abs().amax() > 0


# -- 5. None is the default baseline --------------------------------------------------------------


@pytest.mark.parametrize(
    "method, key, options",
    [
        ("integrated_gradients", "baselines", {"n_steps": 4}),
        ("deeplift", "baselines", {}),
        ("deeplift_shap", "baselines", {"n_baselines": 2}),
        ("expected_gradients", "baselines", {"n_samples": 4}),
        ("occlusion", "baseline", {"window": 16, "stride": 16}),
        ("feature_ablation", "baseline", {"n_segments": 4}),
        ("lime", "baseline", {"n_segments": 4, "n_samples": 16}),
        ("kernelshap", "baseline", {"n_segments": 4}),
    ],
)
def test_baselines_none_is_the_methods_default(cnn, x, method, key, options):
    default = explain(cnn, x, method, **options)
    none = explain(cnn, x, method, **options, **{key: None})
    torch.testing.assert_close(none.attributions, default.attributions)


# -- 6. messages ----------------------------------------------------------------------------------


def test_kernelshap_singular_system_advises_what_kernelshap_has(cnn, x):
    mask = torch.arange(4).repeat_interleave(16)[:, None].expand(64, 64).contiguous()
    with pytest.raises(SaliencelabError, match="singular") as info:
        explain(cnn, x, "kernelshap", feature_mask=mask, exact_up_to=0, n_samples=6)
    message = str(info.value)
    assert "alpha" not in message and "exact_up_to" in message and "n_samples" in message
    options = {s.name: s.options for s in sl.methods()}["kernelshap"]
    assert "exact_up_to" in options and "n_segments" in options and "alpha" not in options


@pytest.mark.parametrize("layer", ["", "  "])
def test_an_empty_layer_name_is_refused(cnn, x, layer):
    refused(cnn, x, "gradcam", r"The layer name is empty .*'features'", layer=layer)
    with pytest.raises(SaliencelabError, match="The layer name is empty"):
        sl.explain(cnn, x, methods="saliency", target=sl.channel(layer, 0))


# -- 7. pairs and dicts on the command line -------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("8,8", (8, 8)),
        (" 8 , 8 ", (8, 8)),
        ("(8,8)", (8, 8)),
        ("[8, 8]", (8, 8)),
        ("0.5,2", (0.5, 2)),
        ("{'absolute': False}", {"absolute": False}),
        ('{"absolute": false}', {"absolute": False}),
        ("{'n_steps': 16, 'rule': 'riemann_left'}", {"n_steps": 16, "rule": "riemann_left"}),
        ("a,b", "a,b"),  # not numbers: text
        ("features.8", "features.8"),
        ("8", 8),
    ],
)
def test_option_values_read_pairs_and_dicts(text, expected):
    got = parse_value(text)
    assert got == expected and type(got) is type(expected), (text, got)


def test_an_option_value_that_is_no_literal_is_one_sentence():
    with pytest.raises(SaliencelabError, match="neither a Python nor a JSON literal"):
        parse_options(["base_options={'absolute': Fals}"])
    with pytest.raises(SaliencelabError, match="neither a Python nor a JSON literal"):
        parse_value("(__import__('os').system('true'))")  # read, never run


def _photo(path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


def _cli_maps(tmp_path, name, *args):
    image = _photo(tmp_path / "img.png")
    out = tmp_path / name
    runner = CliRunner(env={"COLUMNS": "200", "SALIENCELAB_DEBUG": None})
    command = ["explain", str(image), "--model", "shapes_cnn", "--out", str(out), *args]
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    with np.load(out / "maps.npz") as maps:
        return {k: maps[k] for k in maps.files}


def test_cli_window_pairs_give_the_map_of_the_same_window(tmp_path):
    args = ["-m", "occlusion", "--option", "stride=8"]
    square = _cli_maps(tmp_path, "int", *args, "--option", "window=8")["img/occlusion"]
    for i, text in enumerate(["8,8", "(8,8)", "[8, 8]"]):
        got = _cli_maps(tmp_path, f"pair{i}", *args, "--option", f"window={text}")
        np.testing.assert_array_equal(got["img/occlusion"], square)
    tall = _cli_maps(tmp_path, "tall", *args, "--option", "window=16,8")["img/occlusion"]
    assert not np.array_equal(tall, square)


def test_cli_base_options_dict_reaches_the_base_method(tmp_path):
    args = ["-m", "smoothgrad", "--option", "n_samples=2"]
    default = _cli_maps(tmp_path, "default", *args)["img/smoothgrad"]
    python = _cli_maps(tmp_path, "py", *args, "--option", "base_options={'absolute': False}")
    json_ = _cli_maps(tmp_path, "json", *args, "--option", 'base_options={"absolute": false}')
    np.testing.assert_array_equal(python["img/smoothgrad"], json_["img/smoothgrad"])
    assert (default >= 0).all() and (python["img/smoothgrad"] < 0).any()  # signed gradients


def test_cli_discard_ratio_text_is_one_error_line(tmp_path):
    image = _photo(tmp_path / "img.png")
    runner = CliRunner(env={"COLUMNS": "200", "SALIENCELAB_DEBUG": None})
    command = ["explain", str(image), "--model", "shapes_vit", "--out", str(tmp_path / "o")]
    result = runner.invoke(
        app, [*command, "-m", "attention_rollout", "--option", "discard_ratio=x"]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "discard_ratio must be in [0, 1)" in errors[0]


# -- 8. half precision: squares in float32 --------------------------------------------------------


class SmoothNet(nn.Module):
    """conv → tanh → conv → tanh → average pool → linear: no kinks, so maps are smooth in the
    inputs and draws (a float64 copy gives the float32 maps up to rounding); `scale` shrinks the
    output, and so every gradient."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.Conv2d(6, 6, 3, padding=1), nn.Tanh()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)
        with torch.no_grad():
            self.fc.weight.mul_(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("method", ["smoothgrad_sq", "vargrad"])
def test_half_models_square_in_float32(method):
    """Gradients of ~1e-4: their squares (~1e-8) are below float16's smallest number. The
    float16 model's map must match the float32 model's on the same (float16-exact) input: the
    same seed and noise, so the only difference is the float16 gradients' rounding."""
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)).half().float()
    net32 = SmoothNet(scale=0.1).eval()
    net16 = SmoothNet(scale=0.1).eval().half()
    options = {"n_samples": 4, "base_options": {"absolute": False}}
    want = sl.explain(net32, x, methods={method: options}, target=0)[method].maps
    got = sl.explain(net16, x, methods={method: options}, target=0)[method].maps
    # every square is below half float16's smallest number (6e-8): 0 once rounded to float16
    assert 1e-12 < float(want.abs().max()) < 2.9e-8
    assert got.dtype == torch.float32
    assert _relative(got, want) < 0.05


# -- 9. seeded draws do not depend on the model's dtype -------------------------------------------


def test_sample_seeds_hash_float32_values_whatever_the_dtype():
    x = torch.randn(3, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    by_hand = [
        int.from_bytes(
            hashlib.sha1((7).to_bytes(8, "little", signed=True) + row.numpy().tobytes()).digest()[
                :8
            ],
            "little",
        )
        >> 1
        for row in x.reshape(3, -1)
    ]
    assert sample_seeds(x, 7) == by_hand  # float32: its own bytes, as always
    assert sample_seeds(x.double(), 7) == by_hand
    half = x.half()
    assert sample_seeds(half, 7) == sample_seeds(half.float(), 7)
    bf16 = x.bfloat16()
    assert sample_seeds(bf16, 7) == sample_seeds(bf16.float(), 7)


SEEDED = {
    "smoothgrad": {"n_samples": 3},
    "smoothgrad_sq": {"n_samples": 3},
    "vargrad": {"n_samples": 3},
    "expected_gradients": {"n_samples": 4},
    "expected_gradients_noisy": {"n_samples": 4, "stdevs": 0.1},
    "deeplift_shap": {"n_baselines": 3},
    "integrated_gradients": {"baselines": "uniform", "n_steps": 4},
    "deeplift": {"baselines": "uniform"},
    "random": {},
}


@pytest.mark.parametrize("name", list(SEEDED))
def test_a_float64_model_copy_gets_the_float32_draws(name):
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    method = name.removesuffix("_noisy")
    net32 = SmoothNet().eval()
    net64 = SmoothNet().eval().double()
    a = sl.explain(net32, x, methods={method: SEEDED[name]}, target=0)[method].maps
    b = sl.explain(net64, x, methods={method: SEEDED[name]}, target=0)[method].maps
    assert _relative(b, a) < 1e-4  # float32 rounding (DeepLIFT's quotients: ~2e-5); draws: ~1
    other_seed = sl.explain(net32, x, methods={method: {**SEEDED[name], "seed": 1}}, target=0)
    assert _relative(other_seed[method].maps, a) > 1e-3  # (the maps do depend on the draws)
