"""Shapes, parameter counts, BatchNorm behaviour, the log-mel front end and the registry.

Eager JAX compiles each op per shape (a normal sampler costs ~0.5 s per parameter shape), so
tests draw inputs with numpy and reuse the default ConvNet on (2, 32, 32, 1) batches.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmcd_jax.models import (
    AudioEncoder,
    ConvNet,
    EncoderWithHead,
    LinearClassifier,
    ProjectionHead,
    ResNet18,
    log_mel_spectrogram,
    make_encoder,
)
from conftest import assert_close

RNG = jax.random.PRNGKey(0)


def _num_params(params) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def _images(channels: int, size: int = 32, batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, size, size, channels)).astype(np.float32)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(
    "make, feat_dim, map_shape",
    [(ConvNet, 128, (8, 8, 128)), (ResNet18, 512, (4, 4, 512))],
    ids=["convnet", "resnet18"],
)
def test_image_encoder_shapes(make, feat_dim, map_shape, channels):
    model, x = make(), _images(channels)
    variables = model.init(RNG, x, train=False)
    features = model.apply(variables, x, train=False)
    assert features.shape == (2, feat_dim) and features.dtype == jnp.float32
    assert np.all(np.isfinite(features))
    assert model.apply(variables, x, train=False, return_feature_map=True).shape == (2, *map_shape)


@pytest.mark.parametrize("make", [ConvNet, ResNet18], ids=["convnet", "resnet18"])
def test_image_encoder_accepts_8x8(make):
    x = _images(3, size=8)
    variables = jax.eval_shape(lambda: make().init(RNG, x, train=False))
    out = jax.eval_shape(lambda v: make().apply(v, x, train=False), variables)
    assert out.shape[0] == 2 and out.ndim == 2


@pytest.mark.parametrize("sample_rate", [8000, 16000])
def test_audio_encoder_shapes(sample_rate):
    model = AudioEncoder(sample_rate=sample_rate)
    x = np.random.default_rng(0).normal(size=(2, 4000)).astype(np.float32)
    variables = model.init(RNG, x, train=False)
    assert model.apply(variables, x, train=False).shape == (2, 128)
    fmap = model.apply(variables, x, train=False, return_feature_map=True)
    # 1 + (4000 - 256) // 64 = 59 frames x 32 mels, max-pooled twice (SAME) -> 15 x 8.
    assert fmap.shape == (2, 15, 8, 128)


def test_resnet18_param_count():
    variables = jax.eval_shape(lambda: ResNet18().init(RNG, _images(3), train=False))
    assert abs(_num_params(variables["params"]) - 11.17e6) / 11.17e6 < 0.01


def test_batchnorm_train_updates_stats_eval_is_deterministic():
    model, x = ConvNet(), _images(1)
    variables = model.init(RNG, x, train=False)
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                           variables["batch_stats"], updates["batch_stats"])
    assert all(jax.tree.leaves(changed))

    evaluated = {**variables, "batch_stats": updates["batch_stats"]}
    out = model.apply(evaluated, x, train=False)  # no `mutable` needed
    np.testing.assert_array_equal(out, model.apply(evaluated, x, train=False))
    # Running averages make each example independent of the rest of the batch.
    other = np.concatenate([x[:1], _images(1, batch=1, seed=1)])
    assert_close(model.apply(evaluated, other, train=False)[0], out[0])


def _reference_log_mel(wave, sample_rate, n_fft, hop, n_mels, fmin, fmax, eps=1e-6):
    """Straightforward numpy loop: periodic Hann, rfft per frame, explicit HTK triangles."""
    mel = lambda hz: 2595.0 * np.log10(1.0 + hz / 700.0)
    inv_mel = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    step = (mel(fmax) - mel(fmin)) / (n_mels + 1)
    points = [inv_mel(mel(fmin) + i * step) for i in range(n_mels + 2)]
    filters = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        lo, centre, hi = points[m], points[m + 1], points[m + 2]
        for k in range(n_fft // 2 + 1):
            f = k * sample_rate / n_fft
            if lo < f <= centre:
                filters[m, k] = (f - lo) / (centre - lo)
            elif centre < f < hi:
                filters[m, k] = (hi - f) / (hi - centre)
    window = np.array([0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft) for n in range(n_fft)])
    out = []
    for example in np.asarray(wave, np.float64):
        rows = []
        for start in range(0, len(example) - n_fft + 1, hop):
            power = np.abs(np.fft.rfft(example[start : start + n_fft] * window)) ** 2
            rows.append(np.log(eps + filters @ power))
        out.append(rows)
    return np.array(out), np.array(points[1:-1])


@pytest.mark.parametrize(
    "sample_rate, n_fft, hop, n_mels, fmin, fmax",
    [(8000, 256, 64, 32, 0.0, None), (16000, 256, 64, 32, 0.0, None),
     (16000, 512, 160, 40, 50.0, 7000.0)],
)
def test_log_mel_matches_numpy_reference(sample_rate, n_fft, hop, n_mels, fmin, fmax):
    wave = np.random.default_rng(0).normal(size=(2, 3000)).astype(np.float32)
    ours = log_mel_spectrogram(wave, sample_rate, n_fft, hop, n_mels, fmin, fmax)
    fmax_hz = fmax or sample_rate / 2
    ref, _ = _reference_log_mel(wave, sample_rate, n_fft, hop, n_mels, fmin, fmax_hz)
    assert ours.shape == ref.shape == (2, 1 + (3000 - n_fft) // hop, n_mels)
    # An absolute 1e-4 error in log space is a 1e-4 relative error in mel power.
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sample_rate", [8000, 16000])
@pytest.mark.parametrize("tone_hz", [500.0, 1000.0, 2500.0])
def test_log_mel_pure_tone_peaks_at_nearest_centre(sample_rate, tone_hz):
    n_fft = 256
    tone_hz = round(tone_hz * n_fft / sample_rate) * sample_rate / n_fft  # on an FFT bin
    t = np.arange(4000) / sample_rate
    wave = np.sin(2 * np.pi * tone_hz * t)[None].astype(np.float32)
    spec = log_mel_spectrogram(wave, sample_rate, n_fft=n_fft)
    _, centres = _reference_log_mel(wave[:, :n_fft], sample_rate, n_fft, 64, 32, 0.0,
                                    sample_rate / 2)
    assert int(jnp.argmax(spec.mean(axis=1)[0])) == int(np.argmin(np.abs(centres - tone_hz)))


def test_make_encoder():
    assert make_encoder("convnet", widths=(8, 16)).widths == (8, 16)
    assert isinstance(make_encoder("audio", sample_rate=16000), AudioEncoder)
    valid = "unknown encoder 'resnet19'; valid: audio, convnet, resnet18"
    with pytest.raises(ValueError, match=valid):
        make_encoder("resnet19")
    audio = make_encoder("audio", backbone="resnet19")
    with pytest.raises(ValueError, match="valid: convnet, resnet18"):
        jax.eval_shape(lambda: audio.init(RNG, np.zeros((1, 4000), np.float32), train=False))


@pytest.mark.parametrize(
    "head, out_dim", [(ProjectionHead(use_bn=True), 128), (LinearClassifier(10), 10)],
    ids=["proj", "linear"],
)
def test_encoder_with_head_tree_and_export(head, out_dim):
    model, x = EncoderWithHead(ConvNet(), head), _images(1)
    variables = model.init(RNG, x, train=False)
    assert set(variables["params"]) == {"encoder", "head"}
    features, out = model.apply(variables, x, train=False)
    assert features.shape == (2, 128) and out.shape == (2, out_dim)

    # The encoder subtree restores on its own.
    encoder_vars = {col: tree["encoder"] for col, tree in variables.items()}
    np.testing.assert_array_equal(ConvNet().apply(encoder_vars, x, train=False), features)


@pytest.mark.parametrize("target", ["sketch", "audio"])
def test_bfloat16_compute_stays_close_to_float32_and_trains(target):
    import optax
    import types
    from cmcd_jax import defaults, losses
    from cmcd_jax.stages import common

    config = defaults.default_config()
    config.data.target = target
    dataset = types.SimpleNamespace(audio_sample_rate=8000)
    head = {"kind": "projection", "hidden_dim": 32, "out_dim": 16}
    models = {}
    for dtype in ("float32", "bfloat16"):
        config.model.dtype = dtype
        models[dtype] = common.build_model(common.encoder_spec(config, target, dataset), head)
    shape = (16, 32, 32, 1) if target == "sketch" else (16, 4000)
    x = jax.random.normal(jax.random.key(1), shape)
    teacher = jax.random.normal(jax.random.key(2), (16, 16))
    variables = models["float32"].init(jax.random.key(0), x, train=False)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))

    def loss(params, model):
        (_, z), _ = model.apply({**variables, "params": params}, x, train=True,
                                mutable=["batch_stats"])
        return losses.cmc_loss(z, teacher, 0.2)

    for dtype, model in models.items():  # The convolutions run in the model's dtype.
        jaxpr = str(jax.make_jaxpr(lambda v: model.apply(v, x, train=False))(variables))
        assert ("bf16[16," in jaxpr) == (dtype == "bfloat16")
    f32 = float(loss(variables["params"], models["float32"]))
    bf16 = float(loss(variables["params"], models["bfloat16"]))
    assert abs(bf16 - f32) < 0.02 * abs(f32)  # bfloat16 keeps ~3 significant digits
    tx = optax.adam(1e-2)
    params, state = variables["params"], tx.init(variables["params"])
    step = jax.jit(jax.value_and_grad(lambda p: loss(p, models["bfloat16"])))
    first, _ = step(params)
    for _ in range(10):
        value, grads = step(params)
        assert value.dtype == jnp.float32
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    assert float(step(params)[0]) < 0.8 * float(first)
