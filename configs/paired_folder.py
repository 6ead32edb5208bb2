"""Your own paired data: a folder of ordinary files listed in manifest.csv (README: "Your
own paired data").

    python -m cmcd_jax.main --config=configs/paired_folder.py --workdir=/tmp/cmcd_folder \
      --config.data.dir=/path/to/dir --config.data.source=image --config.data.target=audio
    python -m cmcd_jax.main --config=configs/paired_folder.py:real ...   # on an accelerator

Three variants (`--config=configs/paired_folder.py:<variant>`):
- `small` (default): the quickstart's budget, a ConvNet of 16/32/64 channels on 32x32 inputs
  and 400 / 800 / 600 steps for steps 1 / 2 / 3: minutes on a CPU, to check that the folder
  loads and the three steps run; too small to learn much from real photos.
- `real`: `defaults.real_data_config`, the starting point for real data: ResNet-18 on 64x64
  inputs, 20000 steps of batch 256 for steps 1 and 2 (hours on one GPU or TPU), 5000 for
  target_only. Raise the steps with the size of the folder.
- `tiny`: `defaults.tiny_config`, 10 steps of batch 32 a stage: a smoke test (the tests').

The folder is converted once into a TFDS dataset (array_record) in the TFDS data dir
(`--config.data.data_dir`), its images and maps cropped and resized to `data.resolution`,
its clips at the files' rate (or `data.audio_sample_rate`) cropped or padded to
`data.audio_seconds`; it is rebuilt only when the manifest, a file or one of these settings
changes. Distillation uses the rows holding both modalities (`--config.data.pairing=label`
instead pairs every target row with a random source row of the same class, re-drawn every
epoch: a weaker assumption than instance pairs). The probe trains on
`downstream.labels_per_class` labelled target rows per class of the train split (all when
fewer) and tests on the test split.
"""

from cmcd_jax import defaults

VARIANTS = {"small": defaults.default_config, "real": defaults.real_data_config,
            "tiny": defaults.tiny_config}


def get_config(variant: str = "small"):
    c = defaults.config_variant("configs/paired_folder.py", VARIANTS, variant)
    c.dataset = "paired_folder"
    c.data.dir = ""  # required: the directory holding manifest.csv
    c.methods = "cmc,cmd,l2,target_only,random_init"
    return c
