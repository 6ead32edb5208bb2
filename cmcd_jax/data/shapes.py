"""`cmcd_shapes`: the embedded paired dataset, as a TFDS builder writing array_record files.

Every record is one procedurally rendered scene (see `cmcd_jax.data.render`) seen in five
paired modalities: `image` (RGB, the source), `depth`, `sketch`, `audio` (targets), plus a
segmentation `mask` and the class `label`. `cmcd_shapes_source` holds the paper's large
unpaired source set for step 1: images of other scenes (their own random stream, so disjoint
from every paired record), `M` of them. Generation is deterministic from the config's seed
and needs no download; the files land in the TFDS data dir (`$TFDS_DATA_DIR` or
`~/tensorflow_datasets` unless one is given) and are read back through `tfds.data_source`.
"""

from __future__ import annotations

import dataclasses
import multiprocessing

import numpy as np
import tensorflow_datasets as tfds

from cmcd_jax.data import datasets, render

MODALITIES = ("image", "depth", "sketch", "audio")
_RENDER_WORKERS = 2  # Rendering is pure numpy: one process per core of the 2-core default.


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
    """Resolution and split sizes of one variant of the dataset."""

    resolution: int = 32
    num_train: int = 6000
    num_test: int = 1000
    seed: int = 0


class CmcdShapes(tfds.core.GeneratorBasedBuilder):
    """Paired image / depth / sketch / audio scenes of 10 classes of 3-D shapes."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "First release.",
                     "1.1.0": "Images only: class-typical object colour, low-saturation "
                              "backgrounds (depth, sketch, audio and masks unchanged)."}
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
        fields = (*MODALITIES, "mask", "label")
        yield from rendered(cfg.seed, split, num_examples, cfg.resolution, fields)


def rendered(seed: int, split: str, num_examples: int, resolution: int, fields: tuple):
    """(index, record) of scenes 0 .. num_examples-1 of `split`, rendered in worker
    processes (in order: the output is the same as one process's)."""
    tasks = ((seed, split, i, resolution, fields) for i in range(num_examples))
    context = multiprocessing.get_context("spawn")  # No fork of a process running JAX.
    with context.Pool(min(_RENDER_WORKERS, max(num_examples, 1))) as pool:
        yield from enumerate(pool.imap(render.render_fields, tasks, chunksize=64))


CONFIG_NAMES = tuple(c.name for c in CmcdShapes.BUILDER_CONFIGS)


@dataclasses.dataclass
class SourcePoolConfig(tfds.core.BuilderConfig):
    """`num_unpaired` source images of scenes at `resolution`, from their own random stream."""

    resolution: int = 32
    num_unpaired: int = 12000
    seed: int = 0


class CmcdShapesSource(tfds.core.GeneratorBasedBuilder):
    """Unpaired, unlabelled-for-training RGB images of cmcd_shapes scenes (step 1's source
    set); the label is stored for analysis only: no stage reads it."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}

    def _info(self) -> tfds.core.DatasetInfo:
        r = self.builder_config.resolution
        return tfds.core.DatasetInfo(builder=self, description=__doc__, features=(
            tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(r, r, 3), dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=render.CLASS_NAMES)})))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {datasets.UNPAIRED: self._generate_examples(self.builder_config.num_unpaired)}

    def _generate_examples(self, num_examples: int):
        cfg = self.builder_config
        yield from rendered(cfg.seed, datasets.UNPAIRED, num_examples, cfg.resolution,
                            ("image", "label"))


def load_shapes(config_name: str = "32", data_dir: str | None = None) -> dict:
    """Builds `cmcd_shapes/<config_name>` on first use and returns {split: data source}."""
    builder = CmcdShapes(config=config_name, data_dir=data_dir or None,
                         file_format="array_record")
    cfg = builder.builder_config
    datasets.build_once(builder, f"cmcd_shapes/{config_name} {CmcdShapes.VERSION}: "
                                 f"{cfg.num_train} train + {cfg.num_test} test scenes rendered "
                                 f"here")
    return builder.as_data_source()


def load_source_pool(config_name: str, num_unpaired: int, data_dir: str | None = None):
    """Builds `cmcd_shapes_source/<config_name>-<num_unpaired>` on first use and returns its
    records: `num_unpaired` images matching `cmcd_shapes/<config_name>`'s resolution."""
    paired = next(c for c in CmcdShapes.BUILDER_CONFIGS if c.name == config_name)
    config = SourcePoolConfig(name=f"{config_name}-{num_unpaired}",
                              resolution=paired.resolution, num_unpaired=num_unpaired,
                              seed=paired.seed)
    builder = CmcdShapesSource(config=config, data_dir=data_dir or None,
                               file_format="array_record")
    datasets.build_once(builder, f"cmcd_shapes_source/{config.name} {CmcdShapesSource.VERSION}: "
                                 f"{num_unpaired} unpaired source images")
    return builder.as_data_source()[datasets.UNPAIRED]


def load_dataset(config_name: str = "32", data_dir: str | None = None,
                 num_unpaired: int = 0, num_pairs: int = 0) -> datasets.Dataset:
    """`load_shapes` as a `Dataset`: every record pairs all modalities; only the
    first `num_pairs` train records when > 0 (m: the paired set, and all the target data a
    method sees); with `num_unpaired` > 0, the image pool also holds that many unpaired
    images (split `unpaired`), which step 1 trains on with the paired images."""
    splits = load_shapes(config_name, data_dir)
    if num_pairs > 0:
        available = len(splits["train"])
        if num_pairs > available:
            raise ValueError(f"config.data.num_pairs={num_pairs}: cmcd_shapes/{config_name} "
                             f"has {available} train records")
        splits = {**splits, "train": datasets.Records(splits["train"], np.arange(num_pairs))}
    dataset = datasets.instance_paired(
        "cmcd_shapes", splits, MODALITIES, num_classes=len(render.CLASS_NAMES), has_mask=True,
        audio_sample_rate=render.AUDIO_SAMPLE_RATE,
        version=f"cmcd_shapes/{config_name}:{CmcdShapes.VERSION}")
    if num_unpaired <= 0:
        return dataset
    pool = load_source_pool(config_name, num_unpaired, data_dir)
    pools = {**dataset.pools, "image": {**dataset.pools["image"], datasets.UNPAIRED: pool}}
    return dataclasses.replace(
        dataset, pools=pools, version=f"{dataset.version}+cmcd_shapes_source/"
                                      f"{config_name}-{num_unpaired}:{CmcdShapesSource.VERSION}")


def from_config(config) -> datasets.Dataset:
    """`load_dataset` as `config.data` sets it (the `sources.LOADERS` entry), its source and
    target checked to be modalities of cmcd_shapes before anything is built."""
    data = config.data
    datasets.check_modalities("cmcd_shapes", MODALITIES, data.source, data.target)
    return load_dataset(data.config_name, data.data_dir or None,
                        num_unpaired=data.source_pool, num_pairs=data.num_pairs)
