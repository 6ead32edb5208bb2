"""conv2d / Conv: forward and gradients equal XLA's conv, nn.Conv parity, fast-path selection."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import cmcd_jax.cpu.conv as conv_lib
from cmcd_jax.models import ConvNet, ResNet
from cmcd_jax.cpu.conv import Conv, conv2d, fast_weight_grad_default, use_fast_weight_grad
from conftest import assert_close

DN = ("NHWC", "HWIO", "NHWC")


def _randn(rng, shape, dtype=np.float32):
    return jnp.asarray(rng.normal(size=shape).astype(np.float32), dtype)


# (kernel (kh, kw), strides, padding, input size, C_in). The first group is what the encoders
# use (3x3 stride 1/2 and 1x1 stride 2 SAME convs, 1-3 or many input channels); C_in <= 3
# exercises the im2col kernel gradient, C_in = 8 the per-offset one.
CASES = [
    ((3, 3), (1, 1), "SAME", 16, 1),
    ((3, 3), (1, 1), "SAME", 16, 3),
    ((3, 3), (1, 1), "SAME", 16, 8),
    ((3, 3), (2, 2), "SAME", 16, 8),
    ((3, 3), (2, 2), "SAME", 15, 3),
    ((1, 1), (2, 2), "SAME", 16, 8),
    ((1, 1), (2, 2), "SAME", 15, 8),
    ((1, 1), (1, 1), "SAME", 16, 4),
    ((3, 3), (1, 1), ((1, 1), (1, 1)), 15, 8),
    ((3, 3), (2, 2), ((0, 1), (0, 1)), 16, 8),
    ((5, 5), (1, 1), "SAME", 15, 3),
    ((5, 5), (2, 2), "VALID", 15, 8),
    ((3, 3), (1, 1), "VALID", 15, 1),
    ((3, 3), (2, 2), "VALID", 15, 8),
    ((3, 5), (1, 2), ((2, 1), (0, 3)), 13, 5),
    ((2, 2), (3, 3), "SAME", 14, 3),
]


def _case_id(case):
    (kh, kw), (sh, sw), padding, size, cin = case
    pad = padding if isinstance(padding, str) else "explicit"
    return f"k{kh}x{kw}-s{sh}x{sw}-{pad}-{size}px-c{cin}"


@pytest.mark.parametrize("phase_input_grad", [True, False], ids=["phases", "xla_input_grad"])
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_conv2d_forward_and_grads_match_xla(case, phase_input_grad, monkeypatch):
    # Strided cases take the input gradient by stride phases (threshold 0) or XLA's transpose.
    min_pixels = 0 if phase_input_grad else 10**9
    monkeypatch.setattr(conv_lib, "PHASE_INPUT_GRAD_MIN_PIXELS", min_pixels)
    kernel_hw, strides, padding, size, cin = case
    rng = np.random.default_rng(0)
    x = _randn(rng, (2, size, size, cin))
    kernel = _randn(rng, (*kernel_hw, cin, 6))

    def plain(x, kernel):
        return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=DN)

    def fast(x, kernel):
        return conv2d(x, kernel, strides, padding, fast_weight_grad=True)

    out_shape = jax.eval_shape(plain, x, kernel).shape
    cotangent = _randn(rng, out_shape)

    @jax.jit
    def both(x, kernel, cotangent):
        (y_ref, vjp_ref), (y, vjp) = jax.vjp(plain, x, kernel), jax.vjp(fast, x, kernel)
        return (y, *vjp(cotangent)), (y_ref, *vjp_ref(cotangent))

    (y, dx, dk), (y_ref, dx_ref, dk_ref) = both(x, kernel, cotangent)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_ref))
    assert_close(dx, dx_ref)
    assert_close(dk, dk_ref)


@pytest.mark.parametrize("path", ["im2col", "taps"])
def test_both_kernel_grad_forms_match_autodiff(path):
    rng = np.random.default_rng(1)
    x, kernel = _randn(rng, (2, 15, 15, 4)), _randn(rng, (3, 3, 4, 5))
    kernel_grad = getattr(conv_lib, f"_kernel_grad_{path}")
    for strides, padding in [((1, 1), "SAME"), ((2, 2), "SAME"), ((2, 1), ((0, 2), (1, 1)))]:
        conv = lambda k: lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=DN)
        g = _randn(rng, jax.eval_shape(conv, kernel).shape)
        pads = conv_lib._explicit_pads(padding, x.shape[1:3], (3, 3), strides)
        both = lambda g: (
            kernel_grad(x, g, kernel.shape, strides, pads),
            jax.vjp(conv, kernel)[1](g)[0],
        )
        assert_close(*jax.jit(both)(g))


def test_bf16_grads_keep_dtype_and_are_close():
    rng = np.random.default_rng(2)
    x, kernel = _randn(rng, (2, 12, 12, 8)), _randn(rng, (3, 3, 8, 4))
    loss = lambda f: lambda x, k: jnp.sum(f(x, k).astype(jnp.float32) ** 2)
    ref = jax.grad(loss(lambda x, k: conv2d(x, k, (1, 1), "SAME", False)), (0, 1))(x, kernel)
    grads = jax.grad(loss(lambda x, k: conv2d(x, k, (1, 1), "SAME", True)), (0, 1))(
        x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
    )
    for got, want in zip(grads, ref):
        assert got.dtype == jnp.bfloat16
        assert_close(got, want, rtol=5e-2)


def _uses_custom_vjp(fn, *args) -> bool:
    return "custom_vjp_call" in str(jax.make_jaxpr(fn)(*args))


def test_fast_path_selection_precedence(monkeypatch):
    x, kernel = jnp.zeros((2, 32, 32, 64)), jnp.zeros((3, 3, 64, 64))
    call = lambda fast: lambda x, k: conv2d(x, k, (1, 1), "SAME", fast)
    assert _uses_custom_vjp(call(True), x, kernel)
    assert not _uses_custom_vjp(call(False), x, kernel)
    with fast_weight_grad_default(True):
        assert _uses_custom_vjp(call(None), x, kernel)
        assert not _uses_custom_vjp(call(False), x, kernel)
    with fast_weight_grad_default(False):
        assert not _uses_custom_vjp(call(None), x, kernel)
        assert _uses_custom_vjp(call(True), x, kernel)
    assert conv_lib.FAST_WEIGHT_GRAD is None
    # Auto on CPU: per-layer shape rule.
    assert jax.default_backend() == "cpu"
    auto = lambda xs, ks, s: use_fast_weight_grad(None, xs, ks, s, "SAME")
    assert not auto((2, 32, 32, 64), (3, 3, 64, 64), (1, 1))  # stride-1, big map: XLA
    assert auto((2, 16, 16, 64), (3, 3, 64, 64), (1, 1))  # small map
    assert auto((2, 32, 32, 3), (3, 3, 3, 64), (1, 1))  # few input channels (im2col)
    assert auto((2, 32, 32, 64), (3, 3, 64, 128), (2, 2))  # strided
    assert auto((2, 32, 32, 64), (1, 1, 64, 128), (2, 2))  # 1x1
    assert not _uses_custom_vjp(call(None), x, kernel)
    assert _uses_custom_vjp(call(None), x[:, :16, :16], kernel)
    # Auto elsewhere: never (decided at call time, not import time).
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert not use_fast_weight_grad(None)
    assert not _uses_custom_vjp(call(None), x[:, :16, :16], kernel)
    assert _uses_custom_vjp(call(True), x, kernel)


CONV_ARGS = [
    dict(features=6, kernel_size=(3, 3), strides=(1, 1), padding="SAME", use_bias=False),
    dict(features=6, kernel_size=(3, 3), strides=(2, 2), padding="SAME", use_bias=True),
    dict(features=5, kernel_size=(1, 1), strides=2, padding="SAME", use_bias=False),
    dict(features=4, kernel_size=(3, 3), strides=1, padding="VALID"),
    dict(features=4, kernel_size=(3, 3), padding=((1, 0), (0, 1))),
    dict(features=4, kernel_size=(3, 3), padding=1, dtype=jnp.bfloat16),
    dict(
        features=4,
        kernel_size=(3, 3),
        kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
        bias_init=nn.initializers.normal(0.1),
    ),
]


@pytest.mark.parametrize("kwargs", CONV_ARGS)
@pytest.mark.parametrize("fast", [True, False])
def test_conv_module_matches_nn_conv(kwargs, fast):
    x = _randn(np.random.default_rng(3), (2, 11, 11, 3))
    ref_vars = nn.Conv(**kwargs).init(jax.random.PRNGKey(0), x)
    module = Conv(**kwargs, fast_weight_grad=fast)
    variables = module.init(jax.random.PRNGKey(0), x)
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(ref_vars)
    for got, want in zip(jax.tree.leaves(variables), jax.tree.leaves(ref_vars)):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    y, y_ref = module.apply(ref_vars, x), nn.Conv(**kwargs).apply(ref_vars, x)
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y_ref, np.float32))


def test_conv_module_batch_dims_and_int_kernel_size():
    kwargs = dict(features=4, kernel_size=(3, 3), strides=2)
    for shape in [(2, 3, 9, 9, 2), (9, 9, 2)]:
        x = _randn(np.random.default_rng(4), shape)
        variables = nn.Conv(**kwargs).init(jax.random.PRNGKey(0), x)
        y = Conv(**kwargs, fast_weight_grad=True).apply(variables, x)
        y_ref = nn.Conv(**kwargs).apply(variables, x)
        np.testing.assert_array_equal(np.asarray(y), np.asarray(y_ref))
    with pytest.raises(TypeError, match="pair"):  # nn.Conv would build a 1-D conv
        Conv(features=4, kernel_size=3).init(jax.random.PRNGKey(0), x)


@pytest.mark.parametrize(
    "model",
    [ConvNet(widths=(4, 8), convs_per_stage=1), ResNet(stage_sizes=(1, 1), num_filters=4)],
    ids=["convnet", "resnet"],
)
def test_train_step_gradients_fast_path_on_equal_off(model):
    x = _randn(np.random.default_rng(5), (2, 16, 16, 3))
    variables = model.init(jax.random.PRNGKey(0), x, train=False)

    def grads(fast):
        def loss(params):
            with fast_weight_grad_default(fast):
                out, _ = model.apply(
                    {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
                )
            return jnp.sum(out**2)

        return jax.jit(jax.value_and_grad(loss))(variables["params"])

    (loss_on, g_on), (loss_off, g_off) = grads(True), grads(False)
    assert_close(loss_on, loss_off)
    assert jax.tree_util.tree_structure(g_on) == jax.tree_util.tree_structure(g_off)
    for got, want in zip(jax.tree.leaves(g_on), jax.tree.leaves(g_off)):
        assert_close(got, want, rtol=2e-5)
