"""Image -> audio, paired by label: MNIST digits teach an encoder of spoken digits (FSDD).

Prepare (once). MNIST is TFDS's own builder, read here as array_record; building it needs
TensorFlow (any environment will do, e.g. `pip install tensorflow`):

    tfds build mnist --file_format=array_record --data_dir=$DATA

The spoken digits (`cmcd_spoken_digit`, FSDD v1.0.9, 12 MB) are downloaded and built into
the same data dir on the first run, without TensorFlow. Offline, put a copy of
https://github.com/Jakobovski/free-spoken-digit-dataset/archive/v1.0.9.tar.gz in the manual
dir first: `$DATA/downloads/manual/free-spoken-digit-dataset-1.0.9.tar.gz`.

Run:

    python -m cmcd_jax.main --config=configs/spoken_digit_mnist.py \
        --workdir=/tmp/cmcd_spoken_digit_mnist --config.data.data_dir=$DATA
"""

from cmcd_jax import defaults


def get_config():
    c = defaults.default_config()
    c.dataset = "spoken_digit_mnist"
    c.data.source, c.data.target = "image", "audio"
    c.data.resolution = 32  # MNIST's 28x28, one channel, resized to 32x32
    c.model.encoder_kwargs = c.model.target_encoder_kwargs = dict(widths=(32, 64, 128),
                                                                  convs_per_stage=2)
    c.model.proj_dim = 128
    c.pretrain.update(steps=4000, batch_size=256, learning_rate=2e-3, warmup_steps=200)
    c.distill.update(steps=3000, batch_size=128, learning_rate=1e-3, warmup_steps=150)
    c.target_only.update(steps=1000, batch_size=64, learning_rate=2e-3, warmup_steps=50)
    c.finetune.update(steps=1000, batch_size=64, learning_rate=1e-3, warmup_steps=50)
    c.downstream.probe_steps = 1000
    c.checkpoint.every = 1000
    return c
