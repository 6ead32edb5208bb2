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
    c = defaults.real_data_config()  # ResNet-18, the 256x256 renderings resized to 64x64
    c.dataset = "sketchy"
    c.data.source, c.data.target = "image", "sketch"
    return c
