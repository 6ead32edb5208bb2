"""Your own paired data: a folder of ordinary files listed in manifest.csv (README: "Your
own paired data").

    python -m cmcd_jax.main --config=configs/paired_folder.py --workdir=/tmp/cmcd_folder \
      --config.data.dir=/path/to/dir --config.data.source=image --config.data.target=audio

The folder is converted once into a TFDS dataset (array_record) in the TFDS data dir
(`--config.data.data_dir`), rebuilt only when the manifest or a file changes. Distillation
uses the rows holding both modalities (`--config.data.pairing=label` instead pairs every
target row with a random source row of the same class, re-drawn every epoch: a weaker
assumption than instance pairs). The probe trains on `downstream.labels_per_class` labelled
target rows per class of the train split (all when fewer) and tests on the test split.
"""

from cmcd_jax import defaults


def get_config():
    c = defaults.default_config()
    c.dataset = "paired_folder"
    c.data.dir = ""  # required: the directory holding manifest.csv
    c.methods = "cmc,cmd,l2,target_only,random_init"
    return c
