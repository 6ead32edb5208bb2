"""The benchmark harness end to end on tiny models, the ViT against the reference's definition,
and the ViT's fast-path ops against plain ones. No timing is asserted."""

import importlib.util
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cmcd_jax.bench import speed
from cmcd_jax.models import ENCODERS, IMAGE_ENCODERS, ViT
from cmcd_jax.models.vit import Dense, PatchEmbed, SelfAttention, dense_matmul, gelu, patchify
from conftest import assert_close

RNG = jax.random.PRNGKey(0)
STEP_FIELDS = {"framework", "version", "model", "batch", "threads", "step_sec_median",
               "samples_per_sec", "compile_sec", "flops_per_sample", "achieved_flops_per_sec",
               "peak_flops_per_sec", "utilization", "compiled_flops_per_sample", "backend",
               "xla_flags"}
TINY = {"resnet18": {"stage_sizes": (0, 1), "num_filters": 8},  # stem + a strided block
        "vit_t4": {"width": 32, "depth": 1, "num_heads": 2, "mlp_dim": 64}}


def _num_params(tree) -> int:
    return sum(math.prod(p.shape) for p in jax.tree.leaves(tree))


def _randn(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


@pytest.fixture
def fake_torch_python(tmp_path):
    """An 'interpreter' that imports torch and prints a fixed reference line."""
    path = tmp_path / "fake_python"
    path.write_text('#!/bin/sh\n[ "$1" = "-c" ] && exit 0\n'
                    'echo \'{"framework": "torch", "samples_per_sec": 10.0}\'\n')
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("model, teacher", [("resnet18", "online"), ("vit_t4", "cached")])
def test_step_harness_prints_every_field(model, teacher, fake_torch_python, monkeypatch,
                                         capsys):
    monkeypatch.setattr(speed, "PEAK_MATMUL_SIZE", 128)
    records = speed.main(["--model", model, "--batch", "4", "--steps", "2", "--warmup", "1",
                          "--teacher", teacher, "--vs-torch", "--torch-python",
                          fake_torch_python], **TINY[model])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(records) == 1
    record = json.loads(lines[0])
    assert record == json.loads(json.dumps(records[0]))
    assert STEP_FIELDS <= set(record) and record["framework"] == "jax"
    assert (record["model"], record["batch"], record["teacher"]) == (model, 4, teacher)
    for key in STEP_FIELDS - {"framework", "version", "model", "backend", "xla_flags"}:
        assert math.isfinite(record[key]) and record[key] > 0, key
    assert record["samples_per_sec"] == pytest.approx(4 / record["step_sec_median"])
    assert record["torch"]["samples_per_sec"] == 10.0
    assert record["ratio"] == pytest.approx(record["samples_per_sec"] / 10.0)


def test_missing_torch_skips_the_reference(tmp_path, capsys):
    no_torch = tmp_path / "no_torch_python"
    no_torch.write_text("#!/bin/sh\nexit 1\n")
    no_torch.chmod(0o755)
    assert speed.run_torch(str(no_torch), speed.TORCH_SCRIPT, "resnet18", 2, 1, 1) is None
    assert "cannot import torch" in capsys.readouterr().err


def test_reference_optimizers_match_torch_update_rules():
    params, grads = {"w": jnp.array([1.0, -2.0])}, {"w": jnp.array([0.5, 0.25])}
    sgd = speed.make_tx("resnet18")
    updates, _ = sgd.update(grads, sgd.init(params), params)
    assert_close(updates["w"], -0.05 * (grads["w"] + 5e-4 * params["w"]))
    adamw = speed.make_tx("vit_t4")
    updates, _ = adamw.update(grads, adamw.init(params), params)
    first = grads["w"] / (jnp.abs(grads["w"]) + 1e-8)  # Adam's bias-corrected first step.
    np.testing.assert_allclose(updates["w"], -1e-3 * (first + 0.05 * params["w"]), rtol=1e-5)


def test_cached_teacher_step_has_no_teacher_forward():
    online = speed.model_flops("resnet18", 4, **TINY["resnet18"])
    cached = speed.model_flops("resnet18", 4, True, **TINY["resnet18"])
    # The teacher's forward is about a third of a student train step (forward + backward).
    assert 0.15 < 1 - cached / online < 0.35


def test_stage_command_config_builds_the_model(tmp_path):
    assert (speed.REPO / "cmcd_jax" / "main.py").is_file()  # The stage runs from the repo root.
    args = speed.parse_args(["--mode", "stage", "--model", "vit_t4", "--stage-steps", "8"])
    command = speed.stage_command(tmp_path, args)
    assert "--config.distill.steps=8" in command and "--config.log_every=2" in command
    spec = importlib.util.spec_from_file_location("bench_config", tmp_path / "bench_config.py")
    config_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config_module)
    config = config_module.get_config()
    assert (config.model.encoder, config.model.encoder_kwargs.to_dict(),
            config.model.target_encoder_kwargs.to_dict()) == ("vit_t4", {}, {})
    cached = speed.stage_command(tmp_path, speed.parse_args(
        ["--mode", "stage", "--teacher", "cached"]))
    assert cached[-2:] == ["--config.distill.cache_teacher=True",
                           "--config.distill.min_crop_scale=1"]


def reference_vit_t4_params(in_ch: int, width=192, depth=12, mlp=768, patch=4, size=32,
                            dim=128) -> int:
    """Parameter count of torch_reference.py's ViT(in_ch), from its definition."""
    embed = patch * patch * in_ch * width + width
    pos = (size // patch) ** 2 * width
    attn = 3 * width * width + 3 * width + width * width + width  # in_proj + out_proj
    block = 2 * 2 * width + attn + (width * mlp + mlp) + (mlp * width + width)
    return embed + pos + depth * block + 2 * width + width * dim + dim


@pytest.mark.parametrize("in_ch", [1, 3])
def test_vit_t4_parameter_count_equals_reference(in_ch):
    model = speed.build_model("vit_t4")
    x = jnp.zeros((1, 32, 32, in_ch))
    variables = jax.eval_shape(lambda: model.init(RNG, x, train=False))
    assert set(variables) == {"params"}
    assert _num_params(variables) == reference_vit_t4_params(in_ch)


def test_vit_is_a_registered_image_encoder():
    assert ENCODERS["vit_t4"] is IMAGE_ENCODERS["vit_t4"] is ViT


@pytest.mark.parametrize("size, grid", [((32, 32), (8, 8)), ((36, 22), (9, 5))])
def test_vit_forward_shapes(size, grid):
    model, x = ViT(**TINY["vit_t4"]), _randn((2, *size, 3))
    variables = model.init(RNG, x, train=False)
    assert variables["params"]["pos"].shape == (1, grid[0] * grid[1], 32)
    features = model.apply(variables, x, train=True)
    assert features.shape == (2, 32) and features.dtype == jnp.float32
    assert np.all(np.isfinite(features))
    tokens = model.apply(variables, x, train=False, return_feature_map=True)
    assert tokens.shape == (2, *grid, 32)
    assert_close(tokens.mean(axis=(1, 2)), features)


def test_patch_embed_equals_strided_conv_with_gradients():
    x, patch = _randn((2, 18, 17, 3)), 4
    embed = PatchEmbed(8, patch)
    params = embed.init(RNG, x)["params"]

    def conv(params, x):
        y = lax.conv_general_dilated(x, params["kernel"], (patch, patch), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + params["bias"]

    y, y_ref = embed.apply({"params": params}, x), conv(params, x)
    assert y.shape == (2, 4, 4, 8) and patchify(x, patch).shape == (2, 4, 4, 48)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    cotangent = _randn(y.shape, seed=1)
    grads = jax.grad(lambda p, x: jnp.vdot(embed.apply({"params": p}, x), cotangent),
                     argnums=(0, 1))(params, x)
    grads_ref = jax.grad(lambda p, x: jnp.vdot(conv(p, x), cotangent), argnums=(0, 1))(params, x)
    for g, g_ref in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)


def test_self_attention_equals_flax_multi_head_attention():
    x = _randn((2, 10, 12))
    attn = SelfAttention(num_heads=3)
    params = attn.init(RNG, x)["params"]
    mha = nn.MultiHeadDotProductAttention(num_heads=3)
    q, k, v = (params["qkv"]["kernel"].reshape(12, 3, 3, 4)[:, i] for i in range(3))
    qb, kb, vb = (params["qkv"]["bias"].reshape(3, 3, 4)[i] for i in range(3))
    mha_params = {"query": {"kernel": q, "bias": qb}, "key": {"kernel": k, "bias": kb},
                  "value": {"kernel": v, "bias": vb},
                  "out": {"kernel": params["out"]["kernel"].reshape(3, 4, 12),
                          "bias": params["out"]["bias"]}}
    np.testing.assert_allclose(attn.apply({"params": params}, x),
                               mha.apply({"params": mha_params}, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("x_shape", [(6, 5), (2, 3, 5)])
def test_dense_matmul_gradients_equal_autodiff(x_shape):
    x, kernel = _randn(x_shape), _randn((5, 7), seed=1)
    cotangent = _randn((*x_shape[:-1], 7), seed=2)
    (y, vjp), (y_ref, vjp_ref) = jax.vjp(dense_matmul, x, kernel), jax.vjp(jnp.matmul, x, kernel)
    assert_close(y, y_ref)
    for g, g_ref in zip(vjp(cotangent), vjp_ref(cotangent)):
        assert_close(g, g_ref)


def test_dense_has_flax_dense_parameters_and_outputs():
    x = _randn((3, 4, 5))
    params = Dense(7).init(RNG, x)["params"]
    flax_params = nn.Dense(7).init(RNG, x)["params"]
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, flax_params)
    np.testing.assert_allclose(params["kernel"], flax_params["kernel"])
    assert_close(Dense(7).apply({"params": params}, x), nn.Dense(7).apply({"params": params}, x))


def test_gelu_is_the_exact_gelu_with_its_derivative():
    x = jnp.linspace(-8.0, 8.0, 4001)
    phi = 0.5 * (1.0 + np.vectorize(math.erf)(np.asarray(x, np.float64) / math.sqrt(2.0)))
    assert_close(gelu(x), np.asarray(x, np.float64) * phi)
    density = np.exp(-np.asarray(x, np.float64) ** 2 / 2) / math.sqrt(2 * math.pi)
    assert_close(jax.vmap(jax.grad(gelu))(x), phi + np.asarray(x) * density)
    assert_close(gelu(x), jax.nn.gelu(x, approximate=False))
