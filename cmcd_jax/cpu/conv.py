"""2-D convolution with a faster weight gradient on XLA:CPU.

On XLA:CPU the kernel (weight) gradient of ``lax.conv_general_dilated`` can be several times
slower than its forward pass (XLA computes it as a convolution over the batch axis, which
is slow for large batches of small feature maps) and dominates conv-net train steps.
:func:`conv2d` keeps XLA's forward and input gradient (``jax.vjp`` of the conv with the
kernel closed over; for strided convs on 8x8+ output maps the input gradient is instead a
stride-1 conv per stride phase, :func:`_input_grad_phases`, which skips XLA's convolution over
a zero-dilated gradient) but computes the kernel gradient itself from shifted slices: for each
kernel offset ``(i, j)`` the strided slice of the padded input that lines up with the output
is contracted with the output gradient over batch and spatial axes, giving ``(C_in, C_out)``,
and the ``K*K`` results are stacked to HWIO. Two forms, chosen by shape:

* im2col (``K*K*C_in <= IM2COL_MAX_PATCH`` or 1x1 kernels): the slices are stacked into one
  ``(K*K*C_in, M)`` patch matrix and a single matmul gives the whole gradient;
* per offset: ``K*K`` matmuls ``g^T @ window`` run one at a time in a ``lax.scan``, so only
  one window buffer is live (a single stacked matmul is 1.5-3x slower there).

How much this wins depends on who runs XLA's convolutions: with jaxlib 0.10's default
(YNNPACK) the kernel gradient is ~5x the forward and the custom one ~2x faster; with
:mod:`cmcd_jax.cpu.xla_flags` (XLA's own Eigen convolutions, as ``python -m cmcd_jax.main``
runs) XLA's kernel gradient is ~1.6x its forward, and the auto rule below still made the
ResNet-18 benchmark step a little faster than XLA's gradient everywhere (32.5 vs 30.3 samples/s).

:class:`Conv` is a drop-in for the subset of ``flax.linen.Conv`` that the encoders use
(identical parameter names, shapes, initialisation and outputs).

Whether a conv uses the custom gradient is decided when it is traced
(:func:`use_fast_weight_grad`):

1. an explicit ``fast_weight_grad=True/False`` (argument of :func:`conv2d`, attribute of
   :class:`Conv`) wins;
2. else the module default :data:`FAST_WEIGHT_GRAD`, if not ``None`` (assign it, or use the
   :func:`fast_weight_grad_default` context manager);
3. else auto: never off the CPU backend (``jax.default_backend() != 'cpu'``: XLA's own
   gradient is faster on GPU/TPU); on CPU per layer by the shape rule of
   :func:`custom_weight_grad_wins`, which keeps XLA's gradient only for stride-1 ``k x k``
   convs (``k > 1``) with many input channels on large maps (>= 512 output pixels), where
   XLA's convolution is as fast.

A function jitted before the default changes keeps the choice it was traced with.

Where ResNet-18's step is slower than PyTorch's (oneDNN) on a 2-core AMD EPYC (the README's
Speed table): the frozen teacher's forward takes 0.44 s against ~0.40 s in torch, the
student's forward + backward ~1.55-1.75 s against ~1.2 s, most of it in XLA's (Eigen's)
convolutions. A 3x3 convolution's forward runs at 170-210 GFLOP/s, the rate XLA's matmuls reach
there (195-215 GFLOP/s), while oneDNN's reach 230-270 GFLOP/s on the same shapes (8x8x256,
batch 64: 24.4 vs 18.8 ms). What did not pay: Eigen already runs oneDNN's sgemm on small blocks
(``ONEDNN_VERBOSE=1`` lists its ``gemm_api`` calls), and jaxlib 0.10's oneDNN switches
(``--xla_cpu_use_onednn``, ``--xla_cpu_experimental_onednn_custom_call``, with or without
``--xla_cpu_use_thunk_runtime=false``, ``--xla_cpu_experimental_onednn_fusion_type=dot,eltwise``)
run no oneDNN convolution and leave the times unchanged; a Winograd F(2x2, 3x3) convolution
written in JAX loses on 32x32 and 16x16 maps (its input transform writes 4x the activation:
60-70 ms against the convolution's 28) and wins the 8x8 forward only in some processes
(14.5-15.4 vs 22.7-24.4 ms, 23.8 in another); a hand-written one-pass BatchNorm backward gained
nothing measurable (BatchNorm's statistics cost ~6% of the step, measured by swapping it for a
plain affine map). The stride-phase input gradient (27 vs 51 ms and 16 vs 29 ms on the 16x16
and 8x8 output maps) took the step from 31.4-32.5 to 32.2-33.4 samples/s in runs alternating
the two commits (1885-1922 vs 1924-1940 ms per step in one process).
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Any, Callable, Iterator, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Dtype = Any
Pads = Tuple[Tuple[int, int], Tuple[int, int]]
Padding = Union[str, Sequence[Tuple[int, int]]]

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")

#: Module-level default: ``None`` = auto (CPU backend only, per-layer shape rule);
#: ``True``/``False`` force the custom weight gradient on/off where no explicit choice is given.
FAST_WEIGHT_GRAD: bool | None = None

#: The custom VJP computes a strided conv's input gradient by stride phases when its output
#: map has at least this many pixels (XLA's transpose won only on ResNet-18's 4x4 maps).
PHASE_INPUT_GRAD_MIN_PIXELS = 64

#: Patch size ``K*K*C_in`` up to which the kernel gradient is one im2col matmul.
IM2COL_MAX_PATCH = 32

#: Auto mode keeps XLA's weight gradient for stride-1 convs with at least this many output
#: pixels per image (and more than ``IM2COL_MAX_PATCH`` patch entries).
XLA_MIN_OUTPUT_PIXELS = 512


@contextlib.contextmanager
def fast_weight_grad_default(enabled: bool | None) -> Iterator[None]:
    """Temporarily set :data:`FAST_WEIGHT_GRAD` (only functions traced inside see it)."""
    global FAST_WEIGHT_GRAD
    previous, FAST_WEIGHT_GRAD = FAST_WEIGHT_GRAD, enabled
    try:
        yield
    finally:
        FAST_WEIGHT_GRAD = previous


def custom_weight_grad_wins(kernel_shape, strides, out_hw) -> bool:
    """Auto rule from XLA:CPU timings: is the custom kernel gradient the faster one?

    It is for strided convs (1.2-3x), 1x1 convs (~3x at stride 2), few input channels
    (``K*K*C_in <= IM2COL_MAX_PATCH``: one im2col matmul, up to 8x) and small output maps
    (``H_out*W_out < XLA_MIN_OUTPUT_PIXELS``: 1.3-3x at batch 64-256); XLA's gradient is as
    fast or faster for stride-1 ``k x k`` convs with more channels on 24x24+ maps.
    """
    kh, kw, cin = kernel_shape[:3]
    return (
        max(strides) > 1
        or kh * kw == 1
        or kh * kw * cin <= IM2COL_MAX_PATCH
        or out_hw[0] * out_hw[1] < XLA_MIN_OUTPUT_PIXELS
    )


def use_fast_weight_grad(
    fast: bool | None = None,
    x_shape: Sequence[int] | None = None,
    kernel_shape: Sequence[int] | None = None,
    strides: Sequence[int] = (1, 1),
    padding: Padding = "SAME",
) -> bool:
    """Resolve: explicit ``fast``, then :data:`FAST_WEIGHT_GRAD`, then auto.

    Auto is ``False`` off the CPU backend; on CPU it applies
    :func:`custom_weight_grad_wins` when the NHWC ``x_shape`` and HWIO ``kernel_shape`` are
    given, else ``True``.
    """
    if fast is None:
        fast = FAST_WEIGHT_GRAD
    if fast is not None:
        return bool(fast)
    if jax.default_backend() != "cpu":
        return False
    if x_shape is None or kernel_shape is None:
        return True
    strides = tuple(strides)
    k_hw = tuple(kernel_shape[:2])
    pads = _explicit_pads(_canonical_padding(padding), tuple(x_shape[1:3]), k_hw, strides)
    out_hw = [
        (size + lo + hi - k) // s + 1
        for size, (lo, hi), k, s in zip(x_shape[1:3], pads, k_hw, strides)
    ]
    return custom_weight_grad_wins(kernel_shape, strides, out_hw)


def _canonical_padding(padding: Padding) -> Union[str, Pads]:
    """'SAME'/'VALID' (any case) or a hashable ``((lo, hi), (lo, hi))``."""
    if isinstance(padding, str):
        padding = padding.upper()
        if padding not in ("SAME", "VALID"):
            raise ValueError(f"conv2d supports 'SAME', 'VALID' or explicit pads, got {padding!r}")
        return padding
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    if len(pads) != 2:
        raise ValueError(f"expected two (lo, hi) pairs, got {padding!r}")
    return pads  # type: ignore[return-value]


def _explicit_pads(padding: Union[str, Pads], in_hw, k_hw, strides) -> Pads:
    if isinstance(padding, str):
        return tuple(tuple(p) for p in lax.padtype_to_pads(in_hw, k_hw, strides, padding))
    return padding


def _plain_conv(x: Array, kernel: Array, strides, padding) -> Array:
    return lax.conv_general_dilated(
        x, kernel, strides, padding, dimension_numbers=DIMENSION_NUMBERS
    )


def _pad_input(x: Array, pads: Pads, extra_h: int = 0, extra_w: int = 0) -> Array:
    (top, bottom), (left, right) = pads
    if (top, bottom + extra_h, left, right + extra_w) == (0, 0, 0, 0):
        return x
    config = ((0, 0, 0), (top, bottom + extra_h, 0), (left, right + extra_w, 0), (0, 0, 0))
    return lax.pad(x, jnp.zeros((), x.dtype), config)


def _matmul(a: Array, b: Array) -> Array:
    """``a @ b`` for 2-D arrays, accumulating (and returning) float32 for sub-32-bit floats."""
    acc = jnp.float32 if jnp.dtype(a.dtype).itemsize < 4 else None
    return lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=acc)


def _kernel_grad_im2col(x: Array, g: Array, kernel_shape, strides, pads: Pads) -> Array:
    """One ``(K*K*C_in, M) @ (M, C_out)`` matmul over the stacked shifted slices of ``x``.

    The slices are taken from the CNHW-transposed input so that stacking them is a cheap
    copy along the leading axis; best for small ``K*K*C_in`` (first layers, 1x1 convs).
    """
    kh, kw, cin, cout = kernel_shape
    n, ho, wo, _ = g.shape
    sh, sw = strides
    xt = jnp.transpose(_pad_input(x, pads), (3, 0, 1, 2))
    windows = [
        lax.slice(xt, (0, 0, i, j), (cin, n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1),
                  (1, 1, sh, sw))
        for i in range(kh)
        for j in range(kw)
    ]
    patches = windows[0] if len(windows) == 1 else jnp.stack(windows)
    return _matmul(patches.reshape(kh * kw * cin, -1), g.reshape(-1, cout)).reshape(kernel_shape)


def _kernel_grad_taps(x: Array, g: Array, kernel_shape, strides, pads: Pads) -> Array:
    """``K*K`` matmuls ``g^T (C_out, M) @ window (M, C_in)``, one kernel offset at a time.

    A ``lax.scan`` over the offsets keeps a single window buffer live (unrolled slices
    would each allocate one, and fresh memory costs page faults on CPU). For strides > 1 the
    padded input is split once into its ``sh*sw`` stride phases, so every window is a plain
    dynamic slice of one phase.
    """
    kh, kw, cin, cout = kernel_shape
    n, ho, wo, _ = g.shape
    sh, sw = strides
    hp = x.shape[1] + pads[0][0] + pads[0][1]
    wp = x.shape[2] + pads[1][0] + pads[1][1]
    hq = max(-(-hp // sh), (kh - 1) // sh + ho)
    wq = max(-(-wp // sw), (kw - 1) // sw + wo)
    xp = _pad_input(x, pads, hq * sh - hp, wq * sw - wp)
    if sh == sw == 1:
        phases = xp[None, None]
    else:
        phases = xp.reshape(n, hq, sh, wq, sw, cin).transpose(2, 4, 0, 1, 3, 5)
    gt = g.reshape(-1, cout).T
    taps = jnp.array(
        [(i % sh, j % sw, i // sh, j // sw) for i in range(kh) for j in range(kw)], jnp.int32
    )
    zero = jnp.zeros((), jnp.int32)

    def tap(carry, t):
        start = (t[0], t[1], zero, t[2], t[3], zero)
        window = lax.dynamic_slice(phases, start, (1, 1, n, ho, wo, cin))
        return carry, _matmul(gt, window.reshape(-1, cin))

    _, grads = lax.scan(tap, None, taps)  # (K*K, C_out, C_in)
    return grads.reshape(kh, kw, cout, cin).transpose(0, 1, 3, 2)


def _input_grad_phases(g: Array, kernel: Array, in_hw, strides, pads: Pads) -> Array:
    """Input gradient of a strided conv as ``s_h * s_w`` stride-1 convs, one per stride phase.

    The padded input's position ``s*q + r`` receives only the kernel taps ``r, r + s, ...``,
    so phase ``(r_h, r_w)`` of the gradient is ``g`` convolved (stride 1) with the flipped,
    transposed sub-kernel ``kernel[r_h::s_h, r_w::s_w]``; the phases are interleaved and
    the padding cropped. XLA's own transpose instead convolves a zero-dilated ``g`` with the
    whole kernel (1.8-1.9x slower for ResNet-18's stride-2 3x3 convs on 16x16 and 8x8 output
    maps).
    """
    kh, kw, cin, _ = kernel.shape
    sh, sw = strides
    n, ho, wo, _ = g.shape
    (top, bottom), (left, right) = pads
    qh, qw = -(-(in_hw[0] + top + bottom) // sh), -(-(in_hw[1] + left + right) // sw)
    rows = []
    for rh in range(sh):
        phases = []
        for rw in range(sw):
            sub = kernel[rh::sh, rw::sw]
            mh, mw = sub.shape[:2]
            if mh == 0 or mw == 0:  # kernel smaller than the stride: no tap lands here
                phases.append(jnp.zeros((n, qh, qw, cin), g.dtype))
                continue
            sub = jnp.flip(sub, (0, 1)).transpose(0, 1, 3, 2)
            phase_pads = ((mh - 1, qh - ho), (mw - 1, qw - wo))
            phases.append(_plain_conv(g, sub.astype(g.dtype), (1, 1), phase_pads))
        rows.append(jnp.stack(phases, axis=3))  # (N, qh, qw, sw, C_in)
    dx = jnp.stack(rows, axis=2).reshape(n, qh * sh, qw * sw, cin)
    return dx[:, top : top + in_hw[0], left : left + in_hw[1]]


def _input_grad(x: Array, kernel: Array, g: Array, strides, padding) -> Array:
    """Input gradient: by stride phases for strided convs on large enough output maps
    (:data:`PHASE_INPUT_GRAD_MIN_PIXELS`), else XLA's transpose of the conv."""
    pads = _explicit_pads(padding, x.shape[1:3], kernel.shape[:2], strides)
    phased = (
        max(strides) > 1
        and g.shape[1] * g.shape[2] >= PHASE_INPUT_GRAD_MIN_PIXELS
        and min(p for pair in pads for p in pair) >= 0
    )
    if phased:
        return _input_grad_phases(g, kernel, x.shape[1:3], strides, pads).astype(x.dtype)
    _, input_vjp = jax.vjp(lambda x_: _plain_conv(x_, kernel, strides, padding), x)
    return input_vjp(g)[0]


def _kernel_grad(x: Array, g: Array, kernel_shape, strides, padding) -> Array:
    """HWIO kernel gradient of the conv from shifted-slice matmuls (f32 accumulation)."""
    kh, kw, cin, _ = kernel_shape
    pads = _explicit_pads(padding, x.shape[1:3], (kh, kw), strides)
    if kh * kw == 1 or kh * kw * cin <= IM2COL_MAX_PATCH:
        return _kernel_grad_im2col(x, g, kernel_shape, strides, pads)
    return _kernel_grad_taps(x, g, kernel_shape, strides, pads)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv2d_fast(x: Array, kernel: Array, strides, padding) -> Array:
    return _plain_conv(x, kernel, strides, padding)


def _conv2d_fast_fwd(x, kernel, strides, padding):
    return _plain_conv(x, kernel, strides, padding), (x, kernel)


def _conv2d_fast_bwd(strides, padding, residuals, g):
    x, kernel = residuals
    dx = _input_grad(x, kernel, g, strides, padding)
    dk = _kernel_grad(x, g.astype(x.dtype), kernel.shape, strides, padding)
    return dx, dk.astype(kernel.dtype)


_conv2d_fast.defvjp(_conv2d_fast_fwd, _conv2d_fast_bwd)


def conv2d(
    x: Array,
    kernel: Array,
    strides: Sequence[int] = (1, 1),
    padding: Padding = "SAME",
    fast_weight_grad: bool | None = None,
) -> Array:
    """NHWC x HWIO -> NHWC convolution, equal to ``lax.conv_general_dilated``.

    ``padding`` is 'SAME', 'VALID' or ``((lo, hi), (lo, hi))``. With the fast path (see
    :func:`use_fast_weight_grad`; ``fast_weight_grad=None`` = auto) the kernel gradient is
    computed as shifted-slice matmuls and the input gradient by XLA's own transpose.
    """
    strides = tuple(int(s) for s in strides)
    if len(strides) != 2:
        raise ValueError(f"expected two strides, got {strides!r}")
    padding = _canonical_padding(padding)
    if x.ndim != 4 or kernel.ndim != 4:
        raise ValueError(f"conv2d expects NHWC x and HWIO kernel, got {x.shape}, {kernel.shape}")
    if use_fast_weight_grad(fast_weight_grad, x.shape, kernel.shape, strides, padding):
        return _conv2d_fast(x, kernel, strides, padding)
    return _plain_conv(x, kernel, strides, padding)


def _pair(v: Union[int, Sequence[int]], what: str) -> Tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ValueError(f"expected an int or two ints for {what}, got {v!r}")
    return v  # type: ignore[return-value]


def _module_padding(padding: Any) -> Padding:
    if isinstance(padding, str):
        return padding
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    return tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)


class Conv(nn.Module):
    """2-D ``nn.Conv`` drop-in (NHWC, HWIO ``kernel`` and ``bias`` params) using :func:`conv2d`.

    Supports ``features``, ``kernel_size`` (a pair), ``strides`` (int or pair), ``padding``
    ('SAME', 'VALID', an int or per-axis ints / ``(lo, hi)`` pairs), ``use_bias, dtype,
    param_dtype, kernel_init, bias_init``; leading batch axes other than one are flattened
    (or added) as in ``nn.Conv``.
    ``fast_weight_grad``: ``None`` = module default / auto, else force on/off.
    """

    features: int
    kernel_size: Sequence[int]
    strides: Union[None, int, Sequence[int]] = 1
    padding: Any = "SAME"
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.linear.default_kernel_init
    bias_init: Callable = nn.initializers.zeros_init()
    fast_weight_grad: bool | None = None

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        """``(*batch, H, W, C_in) -> (*batch, H', W', features)``."""
        if isinstance(self.kernel_size, int):
            # nn.Conv reads an int kernel_size as a 1-D kernel; this module is 2-D only.
            raise TypeError("Conv is 2-D: give kernel_size as a pair, e.g. (3, 3)")
        kernel_size = _pair(self.kernel_size, "kernel_size")
        strides = _pair(1 if self.strides is None else self.strides, "strides")
        batch_shape = inputs.shape[:-3]
        if len(batch_shape) != 1:
            inputs = jnp.reshape(inputs, (-1,) + inputs.shape[-3:])
        kernel = self.param(
            "kernel", self.kernel_init, kernel_size + (inputs.shape[-1], self.features),
            self.param_dtype,
        )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        inputs, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        y = conv2d(inputs, kernel, strides, _module_padding(self.padding), self.fast_weight_grad)
        if bias is not None:
            y = y + bias.reshape((1, 1, 1, -1))
        if len(batch_shape) != 1:
            y = jnp.reshape(y, batch_shape + y.shape[1:])
        return y
