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
    c = defaults.default_config()
    c.dataset = "domainnet"
    c.data.source, c.data.target = "image", "sketch"
    c.data.resolution = 64  # centre square of each image, resized to 64x64
    c.model.encoder = "resnet18"
    c.model.encoder_kwargs = dict(num_filters=64)
    c.model.proj_hidden_dim, c.model.proj_dim = 512, 128
    c.pretrain.update(steps=30000, batch_size=256, learning_rate=1e-3, warmup_steps=1500)
    c.distill.update(steps=20000, batch_size=256, learning_rate=1e-3, warmup_steps=1000)
    c.target_only.update(steps=5000, batch_size=128, learning_rate=1e-3, warmup_steps=250)
    c.finetune.update(steps=5000, batch_size=128, learning_rate=5e-4, warmup_steps=250)
    c.downstream.probe_steps = 2000
    c.checkpoint.every = 2000
    return c
