"""Image -> depth, paired by instance: RGB-D frames of NYU Depth V2 (no labels).

Without labels there is no probe and no label-trained baseline: the methods are the
distillations, and the score is cross-modal retrieval on the test pairs (plus the modality
distances).

Prepare (once). `nyu_depth_v2` is TFDS's own builder (a 32 GB download; building needs
TensorFlow and h5py), read here as array_record; its `validation` split is our `test`:

    tfds build nyu_depth_v2 --file_format=array_record --data_dir=$DATA

Run:

    python -m cmcd_jax.main --config=configs/nyu_depth_v2.py \
        --workdir=/tmp/cmcd_nyu_depth_v2 --config.data.data_dir=$DATA
"""

from cmcd_jax import defaults


def get_config():
    c = defaults.real_data_config()  # ResNet-18, centre 480x480 of each frame resized to 64x64
    c.dataset = "nyu_depth_v2"
    c.data.source, c.data.target = "image", "depth"
    c.methods = "cmc,cmd,l2"
    return c
