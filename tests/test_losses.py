"""Tests for cmcd_jax.losses: numpy references, properties and the multi-device contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmcd_jax import losses

from conftest import run_on_eight_devices

TOL = dict(rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------
# float64 numpy references (explicit loops)
# --------------------------------------------------------------------------------------
def _np_norm(z):
    z = np.asarray(z, np.float64)
    return z / np.linalg.norm(z, axis=-1, keepdims=True)


def _np_log_softmax_entry(row, k):
    """log(exp(row[k]) / sum_j exp(row[j])) computed explicitly."""
    m = max(row)
    return row[k] - (m + np.log(sum(np.exp(r - m) for r in row)))


def np_nt_xent(z1, z2, t):
    z = np.concatenate([_np_norm(z1), _np_norm(z2)])
    m, n = z.shape[0], z1.shape[0]
    total = 0.0
    for i in range(m):
        pos = (i + n) % m
        others = [j for j in range(m) if j != i]
        row = [z[i] @ z[j] / t for j in others]
        total += -_np_log_softmax_entry(row, others.index(pos))
    return total / m


def np_cmc(zs, zt, t, symmetric=True):
    zb, za = _np_norm(zs), _np_norm(zt)
    n = zb.shape[0]
    b2a = a2b = 0.0
    for i in range(n):
        b2a += -_np_log_softmax_entry([zb[i] @ za[j] / t for j in range(n)], i)
        a2b += -_np_log_softmax_entry([za[i] @ zb[j] / t for j in range(n)], i)
    return (b2a + a2b) / (2 * n) if symmetric else b2a / n


def np_cmd(zs, zt, ts, tt, variant):
    zb, za = _np_norm(zs), _np_norm(zt)
    cols = za if variant == "cross" else zb
    n = zb.shape[0]
    total = 0.0
    for i in range(n):
        la = [za[i] @ za[j] / tt for j in range(n)]
        lb = [zb[i] @ cols[j] / ts for j in range(n)]
        for j in range(n):
            total += -np.exp(_np_log_softmax_entry(la, j)) * _np_log_softmax_entry(lb, j)
    return total / n


def np_l2(p, t):
    p, t = np.asarray(p, np.float64), np.asarray(t, np.float64)
    return np.mean([np.sum((p[i] - t[i]) ** 2) for i in range(p.shape[0])])


def _rand(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# --------------------------------------------------------------------------------------
# single-device values
# --------------------------------------------------------------------------------------
def test_nt_xent_matches_numpy():
    z1, z2 = _rand(0, 12, 8), _rand(1, 12, 8)
    for t in (0.1, 0.5):
        np.testing.assert_allclose(losses.nt_xent(z1, z2, temperature=t), np_nt_xent(z1, z2, t), **TOL)


@pytest.mark.parametrize("symmetric", [True, False])
def test_cmc_matches_numpy(symmetric):
    zs, zt = _rand(2, 12, 8), _rand(3, 12, 8)
    got = losses.cmc_loss(zs, zt, temperature=0.07, symmetric=symmetric)
    np.testing.assert_allclose(got, np_cmc(zs, zt, 0.07, symmetric), **TOL)


@pytest.mark.parametrize("variant", ["cross", "within"])
def test_cmd_matches_numpy(variant):
    zs, zt = _rand(4, 12, 8), _rand(5, 12, 8)
    got = losses.cmd_loss(zs, zt, student_temperature=0.07, teacher_temperature=0.04, variant=variant)
    np.testing.assert_allclose(got, np_cmd(zs, zt, 0.07, 0.04, variant), **TOL)


def test_cmd_tiny_teacher_temperature_is_one_directional_infonce():
    zs, zt = _rand(6, 12, 32), _rand(7, 12, 32)
    cmd = losses.cmd_loss(zs, zt, student_temperature=0.07, teacher_temperature=1e-4, variant="cross")
    np.testing.assert_allclose(cmd, np_cmc(zs, zt, 0.07, symmetric=False), **TOL)
    np.testing.assert_allclose(cmd, losses.cmc_loss(zs, zt, 0.07, symmetric=False), **TOL)


def test_l2_align_matches_numpy():
    p, t = _rand(8, 12, 8), _rand(9, 12, 8)
    np.testing.assert_allclose(losses.l2_align(p, t), np_l2(p, t), **TOL)


def test_losses_jit_and_stop_gradient_on_teacher():
    zs, zt = _rand(10, 8, 8), _rand(11, 8, 8)
    fns = {
        "cmc": lambda a, b: losses.cmc_loss(a, b),
        "cmd_cross": lambda a, b: losses.cmd_loss(a, b, variant="cross"),
        "cmd_within": lambda a, b: losses.cmd_loss(a, b, variant="within"),
        "l2": lambda a, b: losses.l2_align(a, b),
    }
    for name, fn in fns.items():
        np.testing.assert_allclose(jax.jit(fn)(zs, zt), fn(zs, zt), **TOL, err_msg=name)
        g_s, g_t = jax.grad(fn, argnums=(0, 1))(zs, zt)
        assert np.all(np.asarray(g_t) == 0), name
        assert np.all(np.isfinite(g_s)) and np.any(np.asarray(g_s) != 0), name


def test_zero_embedding_is_safe():
    zs = _rand(12, 8, 8)
    zs[0] = 0.0
    zt = _rand(13, 8, 8)
    for fn in (losses.cmc_loss, losses.cmd_loss, losses.nt_xent):
        val, g = jax.value_and_grad(fn)(jnp.asarray(zs), jnp.asarray(zt))
        assert np.isfinite(val) and np.all(np.isfinite(g)), fn.__name__


def test_aligned_embeddings_give_lower_cmc_loss():
    z = _rand(14, 16, 64)  # random in 64-d: nearly orthogonal, i.e. well separated
    aligned = losses.cmc_loss(z, z)
    shuffled = losses.cmc_loss(z, z[np.random.default_rng(0).permutation(16)])
    random_pairs = losses.cmc_loss(z, _rand(15, 16, 64))
    assert aligned < 0.1
    assert aligned < shuffled and aligned < random_pairs


def test_unknown_cmd_variant_raises():
    z = _rand(16, 4, 8)
    with pytest.raises(ValueError, match="cross") as exc:
        losses.cmd_loss(z, z, variant="bogus")
    assert "within" in str(exc.value) and "bogus" in str(exc.value)


# --------------------------------------------------------------------------------------
# memory-lean (chunk_size) path == naive path, single device
# --------------------------------------------------------------------------------------
# case -> (loss with its options, chunk sizes); N = 12 columns (24 for nt_xent, where 8
# straddles the z1/z2 boundary and 1 gives chunks that hold only the masked self column)
CHUNK_CASES = {
    "nt_xent": (lambda a, b, **k: losses.nt_xent(a, b, temperature=0.1, **k), (24, 8, 1)),
    "cmc_sym": (lambda a, b, **k: losses.cmc_loss(a, b, symmetric=True, **k), (12, 1)),
    "cmc_asym": (lambda a, b, **k: losses.cmc_loss(a, b, symmetric=False, **k), (12, 3)),
    "cmd_cross": (lambda a, b, **k: losses.cmd_loss(a, b, variant="cross", **k), (12, 1)),
    "cmd_within": (lambda a, b, **k: losses.cmd_loss(
        a, b, student_temperature=0.5, teacher_temperature=0.2, variant="within", **k), (12, 6)),
    # tiny teacher temperature: p_A ~ one-hot, rounding amplified by 1/tau_T
    "cmd_tiny_tau_t": (lambda a, b, **k: losses.cmd_loss(a, b, teacher_temperature=1e-4, **k),
                       (12, 4)),
}


@pytest.mark.parametrize("case", sorted(CHUNK_CASES))
def test_chunked_matches_naive(case):
    fn, sizes = CHUNK_CASES[case]
    vg = lambda a, b, **k: jax.value_and_grad(lambda u, v: fn(u, v, **k), argnums=(0, 1))(a, b)
    # one jit for the naive and all chunked variants, -O0 backend (compile time); the
    # inputs are arguments, not closed over: XLA would constant-fold the teacher side
    zs, zt = _rand(20, 12, 16), _rand(21, 12, 16)
    run = jax.jit(lambda a, b: [vg(a, b)] + [vg(a, b, chunk_size=c) for c in sizes]).lower(
        zs, zt).compile(compiler_options={"xla_backend_optimization_level": 0})
    (v0, (gs0, gt0)), *chunked = run(zs, zt)
    assert np.max(np.abs(gs0)) > 1e-3
    for c, (v, (gs, gt)) in zip(sizes, chunked):
        np.testing.assert_allclose(v, v0, **TOL, err_msg=f"value, chunk_size={c}")
        np.testing.assert_allclose(gs, gs0, **TOL, err_msg=f"student grad, chunk_size={c}")
        np.testing.assert_allclose(gt, gt0, **TOL, err_msg=f"teacher grad, chunk_size={c}")
    zs[5] = 0.0  # a zero embedding stays finite on the chunked path too
    for c, (v, (gs, gt)) in zip((None,) + sizes, run(zs, zt)):
        assert np.isfinite(v) and np.all(np.isfinite(gs)), f"chunk_size={c}"


def test_chunk_size_must_divide_columns():
    z = _rand(22, 12, 8)
    for fn in (losses.cmc_loss, losses.cmd_loss):
        with pytest.raises(ValueError, match=r"chunk_size=5 .*divisor.*M=12"):
            fn(z, z, chunk_size=5)
    with pytest.raises(ValueError, match=r"chunk_size=5 .*M=24"):
        losses.nt_xent(z, z, chunk_size=5)
    with pytest.raises(ValueError, match="chunk_size=0"):
        losses.cmc_loss(z, z, chunk_size=0)


# --------------------------------------------------------------------------------------
# multi-device (shard_map over 'data') in a subprocess with 8 host CPU devices
# --------------------------------------------------------------------------------------
_MULTIDEVICE_SCRIPT = r'''
import functools, json
import numpy as np
import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from cmcd_jax import losses

assert jax.device_count() == 8, jax.devices()
N, D = 32, 32
rng = np.random.default_rng(0)
a = rng.normal(size=(N, D)).astype(np.float32)
b = rng.normal(size=(N, D)).astype(np.float32)

CASES = {
    "nt_xent": functools.partial(losses.nt_xent, temperature=0.1),
    "cmc_sym": functools.partial(losses.cmc_loss, temperature=0.07, symmetric=True),
    "cmc_asym": functools.partial(losses.cmc_loss, temperature=0.07, symmetric=False),
    "cmd_cross": functools.partial(losses.cmd_loss, variant="cross"),
    # higher temperatures: with the defaults the self column dominates both rows of
    # the 'within' variant and the gradient is ~1e-4, too small to test meaningfully
    "cmd_within": functools.partial(losses.cmd_loss, student_temperature=0.5,
                                    teacher_temperature=0.2, variant="within"),
    "l2_align": losses.l2_align,
}
# memory-lean path (N = 32 columns; 64 for nt_xent)
CASES.update({
    "nt_xent/chunk8": functools.partial(CASES["nt_xent"], chunk_size=8),
    "cmc_sym/chunk8": functools.partial(CASES["cmc_sym"], chunk_size=8),
    "cmd_cross/chunk8": functools.partial(CASES["cmd_cross"], chunk_size=8),
    "cmd_within/chunk16": functools.partial(CASES["cmd_within"], chunk_size=16),
})

def mesh_of(n):
    return jax.make_mesh((n,), ("data",), axis_types=(AxisType.Explicit,),
                         devices=jax.devices()[:n])

def sharded_fns(fns, n):
    """One jitted function: for each loss, the n-device (outer, inner) value and grads.

    outer: jax.value_and_grad of the shard_map-ed loss (a global function).
    inner: jax.value_and_grad taken per device *inside* shard_map (train-step style),
           gradients w.r.t. the local slices re-assembled via out_specs P('data').
    All cases share one jit to keep compile time (and the test) short.
    """
    mesh = mesh_of(n)
    specs = (P("data"), P("data"))
    pairs = {}
    for name, fn in fns.items():
        local = functools.partial(lambda f, u, v: f(u, v, axis_name="data"), fn)
        outer = jax.value_and_grad(
            jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P()), argnums=(0, 1))
        inner = jax.shard_map(jax.value_and_grad(local, argnums=(0, 1)), mesh=mesh,
                              in_specs=specs, out_specs=(P(), specs))
        pairs[name] = (outer, inner)
    run = jax.jit(lambda x, y: {k: (o(x, y), i(x, y)) for k, (o, i) in pairs.items()})
    put = lambda v: jax.device_put(v, NamedSharding(mesh, P("data")))
    return lambda x, y: run(put(x), put(y))

def err(u, v):
    """max |u - v| / (1 + |v|): <= 1e-5 iff allclose(u, v, rtol=1e-5, atol=1e-5)."""
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    return float(np.max(np.abs(u - v) / (1.0 + np.abs(v))))

def rel_err(u, v):
    """max |u - v| relative to the reference's scale max |v| (0 if both are all 0)."""
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    d = float(np.max(np.abs(u - v)))
    return d / max(float(np.max(np.abs(v))), 1e-30) if d else 0.0

out = {"contract": {}, "sensitivity": {}}
def global_value_and_grads(fns, x, y):
    """Single-device reference on the global batch (one jit for all cases)."""
    return jax.jit(lambda x, y: {k: jax.value_and_grad(f, argnums=(0, 1))(x, y)
                                 for k, f in fns.items()})(x, y)

# the reference of a chunked case "loss/chunkC" is the naive global "loss"
ref = global_value_and_grads({k: f for k, f in CASES.items() if "/" not in k}, a, b)
for n in (1, 2, 4, 8):
    res = sharded_fns(CASES, n)(a, b)
    for name, ((v1, g1), (v2, g2)) in res.items():
        gv, gg = ref[name.split("/")[0]]
        out["contract"][f"{name}/n={n}"] = {
            "global": float(gv), "outer": float(v1), "inner": float(v2),
            "value_err": max(err(v1, gv), err(v2, gv)),
            "grad0_err": max(err(g1[0], gg[0]), err(g2[0], gg[0])),
            "grad1_err": max(err(g1[1], gg[1]), err(g2[1], gg[1])),
            "grad_rel_err": max(rel_err(g[j], gg[j]) for g in (g1, g2) for j in (0, 1)),
            "grad_scale": float(np.max(np.abs(gg[0]))),
        }

# --- sensitivity checks on 4 devices -------------------------------------------------
# One-hot (orthonormal) embeddings, student == teacher, z1 == z2: with correct global
# positive labels the losses are ~0 at a low temperature.
eye = np.eye(N, D, dtype=np.float32)
SENS = {
    "cmc": functools.partial(losses.cmc_loss, temperature=0.02),
    "nt_xent": functools.partial(losses.nt_xent, temperature=0.02),
}
sens_ref = global_value_and_grads(SENS, a, b)
sens = out["sensitivity"]

def run_sens(tag):
    fn4 = sharded_fns(SENS, 4)
    on_eye, on_ab = fn4(eye, eye), fn4(a, b)
    for k in SENS:
        (v1, g1), (v2, g2) = on_ab[k]
        gv, gg = sens_ref[k]
        sens[f"{k}/{tag}/onehot_loss"] = max(float(on_eye[k][0][0]), float(on_eye[k][1][0]))
        sens[f"{k}/{tag}/value_err"] = max(err(v1, gv), err(v2, gv))
        sens[f"{k}/{tag}/grad_err"] = max(err(g1[0], gg[0]), err(g2[0], gg[0]))

run_sens("correct")
real_gather = losses._gather
try:
    # Bug 1: positive/self labels NOT offset by the device index.
    losses._gather = lambda x, axis_name: (real_gather(x, axis_name)[0], 0)
    run_sens("no_offset")
    # Bug 2: no gradient through all_gather (value identical, gradient wrong).
    def sg_gather(x, axis_name):
        x_all, off = real_gather(x, axis_name)
        return jax.lax.stop_gradient(x_all), off
    losses._gather = sg_gather
    run_sens("sg_gather")
finally:
    losses._gather = real_gather

print("RESULT" + json.dumps(out))
'''


@pytest.fixture(scope="module")
def multidevice_results():
    # -O0 backend roughly halves XLA:CPU compile time (tiny arrays here).
    return run_on_eight_devices(_MULTIDEVICE_SCRIPT, timeout=300,
                                extra_xla_flags="--xla_backend_optimization_level=0")


def test_multidevice_values_and_gradients_match_global(multidevice_results):
    res = multidevice_results["contract"]
    assert len(res) == 10 * 4, sorted(res)
    assert sum("/chunk" in k for k in res) == 4 * 4, sorted(res)
    bad = {
        k: r for k, r in res.items()
        if max(r["value_err"], r["grad0_err"], r["grad1_err"]) > 1e-5
        or r["grad_rel_err"] > 1e-4  # also relative to the gradient's own scale
    }
    assert not bad, "shard_map result != global result:\n" + json.dumps(bad, indent=1)
    # the gradient comparisons are not vacuous
    assert all(r["grad_scale"] > 1e-3 for r in res.values())


def test_multidevice_positive_labels_are_offset(multidevice_results):
    s = multidevice_results["sensitivity"]
    for k in ("cmc", "nt_xent"):
        # correct pairing on 4 devices: near-zero loss, and equal to the global loss
        assert s[f"{k}/correct/onehot_loss"] < 1e-6, s
        assert s[f"{k}/correct/value_err"] < 1e-5, s
        # labels not offset by the device index: large loss / wrong value
        assert s[f"{k}/no_offset/onehot_loss"] > 1.0, s
        assert s[f"{k}/no_offset/value_err"] > 1e-2, s


def test_multidevice_gradient_check_is_sensitive(multidevice_results):
    s = multidevice_results["sensitivity"]
    for k in ("cmc", "nt_xent"):
        assert s[f"{k}/correct/grad_err"] < 1e-5, s
        # a gather without a backward pass keeps the value but breaks the gradient
        assert s[f"{k}/sg_gather/value_err"] < 1e-5, s
        assert s[f"{k}/sg_gather/grad_err"] > 1e-3, s


def test_importing_the_losses_stays_light():
    code = ("import sys; from cmcd_jax import losses; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'tensorflow', 'tensorflow_datasets', 'grain', 'orbax', 'flax', 'matplotlib'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.stdout.strip() == "[]"
