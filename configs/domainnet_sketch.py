"""Image -> sketch, paired by label: DomainNet's real photos and sketches, 345 classes.

Prepare (once). `domainnet` is TFDS's own builder (about 6 GB for `real` and 2.5 GB for
`sketch`; building needs TensorFlow), read here as array_record:

    tfds build domainnet/real domainnet/sketch --file_format=array_record --data_dir=$DATA

Run:

    python -m cmcd_jax.main --config=configs/domainnet_sketch.py \
        --workdir=/tmp/cmcd_domainnet_sketch --config.data.data_dir=$DATA
"""

from cmcd_jax import defaults


def get_config():
    c = defaults.real_data_config()  # ResNet-18, centre square of each image resized to 64x64
    c.dataset = "domainnet"
    c.data.source, c.data.target = "image", "sketch"
    c.pretrain.update(steps=30000, warmup_steps=1500)
    return c
