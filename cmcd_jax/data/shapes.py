"""`cmcd_shapes`: the embedded paired dataset, as a TFDS builder writing array_record files.

Every record is one procedurally rendered scene (see `cmcd_jax.data.render`) seen in five
paired modalities: `image` (RGB, the source), `depth`, `sketch`, `audio` (targets), plus a
segmentation `mask` and the class `label`. Generation is deterministic from the config's seed
and needs no download; the files land in the TFDS data dir (`$TFDS_DATA_DIR` or
`~/tensorflow_datasets` unless one is given) and are read back through `tfds.data_source`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from cmcd_jax.data import render, sources

MODALITIES = ("image", "depth", "sketch", "audio")


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
    """Resolution and split sizes of one variant of the dataset."""

    resolution: int = 32
    num_train: int = 6000
    num_test: int = 1000
    seed: int = 0


class CmcdShapes(tfds.core.GeneratorBasedBuilder):
    """Paired image / depth / sketch / audio scenes of 10 classes of 3-D shapes."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        ShapesConfig(name="32", description="32x32 scenes (default)."),
        ShapesConfig(name="64", description="64x64 scenes.", resolution=64),
        ShapesConfig(name="tiny", description="32x32, 320 train / 160 test: smoke tests.",
                     num_train=320, num_test=160),
    ]
    DEFAULT_CONFIG_NAME = "32"

    def _info(self) -> tfds.core.DatasetInfo:
        r = self.builder_config.resolution
        n_audio = int(render.AUDIO_SAMPLE_RATE * render.AUDIO_SECONDS)
        features = tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(r, r, 3), dtype=np.uint8),
            "depth": tfds.features.Tensor(shape=(r, r), dtype=np.float32),
            "sketch": tfds.features.Tensor(shape=(r, r), dtype=np.uint8),
            "audio": tfds.features.Tensor(shape=(n_audio,), dtype=np.float32),
            "mask": tfds.features.Tensor(shape=(r, r), dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=render.CLASS_NAMES),
        })
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=features,
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: every scene is rendered here.
        cfg = self.builder_config
        return {
            "train": self._generate_examples("train", cfg.num_train),
            "test": self._generate_examples("test", cfg.num_test),
        }

    def _generate_examples(self, split: str, num_examples: int):
        cfg = self.builder_config
        for index in range(num_examples):
            rng = render.scene_rng(cfg.seed, split, index)
            scene = render.render_scene(rng, cfg.resolution)
            yield index, {k: scene[k] for k in (*MODALITIES, "mask", "label")}


def load_shapes(config_name: str = "32", data_dir: str | None = None) -> dict:
    """Builds `cmcd_shapes/<config_name>` on first use and returns {split: data source}."""
    builder = CmcdShapes(config=config_name, data_dir=data_dir or None,
                         file_format="array_record")
    builder.download_and_prepare()
    return builder.as_data_source()


def load_dataset(config_name: str = "32", data_dir: str | None = None) -> sources.Dataset:
    """`load_shapes` as a `sources.Dataset`: every record pairs all modalities."""
    return sources.instance_paired(
        "cmcd_shapes", load_shapes(config_name, data_dir), MODALITIES,
        num_classes=len(render.CLASS_NAMES), has_mask=True,
        audio_sample_rate=render.AUDIO_SAMPLE_RATE)
