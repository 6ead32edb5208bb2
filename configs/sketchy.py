"""Image -> sketch, paired by instance: the Sketchy database (125 classes, 12,500 photos,
about 75,000 sketches), the paper's headline dataset.

Prepare (once): download `rendered_256x256.7z` ("Sketches and Photos") from
https://sketchy.eye.gatech.edu/ and extract it (7z is yours to run) into the TFDS manual dir:

    7z x rendered_256x256.7z -o$DATA/downloads/manual

so that `$DATA/downloads/manual/[rendered_256x256/]256x256/{photo,sketch}/tx_000000000000/`
exist. The first run builds `cmcd_sketchy` from there (no TensorFlow needed); to build it
beforehand:

    python -c "from cmcd_jax.data import sketchy; sketchy.load_sources('$DATA')"

Run:

    python -m cmcd_jax.main --config=configs/sketchy.py \
        --workdir=/tmp/cmcd_sketchy --config.data.data_dir=$DATA
"""

from cmcd_jax import defaults


def get_config():
    c = defaults.default_config()
    c.dataset = "sketchy"
    c.data.source, c.data.target = "image", "sketch"
    c.data.resolution = 64  # the 256x256 renderings resized to 64x64
    c.model.encoder = "resnet18"
    c.model.encoder_kwargs = dict(num_filters=64)
    c.model.proj_hidden_dim, c.model.proj_dim = 512, 128
    c.pretrain.update(steps=20000, batch_size=256, learning_rate=1e-3, warmup_steps=1000)
    c.distill.update(steps=20000, batch_size=256, learning_rate=1e-3, warmup_steps=1000)
    c.target_only.update(steps=5000, batch_size=128, learning_rate=1e-3, warmup_steps=250)
    c.finetune.update(steps=5000, batch_size=128, learning_rate=5e-4, warmup_steps=250)
    c.downstream.probe_steps = 2000
    c.checkpoint.every = 2000
    return c
