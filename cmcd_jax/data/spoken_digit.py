"""`cmcd_spoken_digit`: the Free Spoken Digit Dataset as a TensorFlow-free TFDS builder.

The same archive as TFDS's own `spoken_digit` (which needs TensorFlow to build): FSDD v1.0.9,
`ARCHIVE_URL`, 8 kHz mono WAVs `recordings/<digit>_<speaker>_<index>.wav`. TFDS's download
manager fetches the archive over HTTPS into `<data_dir>/downloads` and checks it against the
size and SHA-256 TFDS registers for its `spoken_digit`; we read it in place with `tarfile` and
`wave`: no extraction (TFDS's extractor needs TensorFlow), no TensorFlow. To build offline,
put the archive in the TFDS manual dir (`<data_dir>/downloads/manual/`, checked the same
way) or pass any local copy as `archive=` (not checked: how the tests feed a fixture).

Records: `audio` float32 (`CLIP_SAMPLES`,) in [-1, 1] (the first second of the recording,
zero-padded at the end when shorter: FSDD recordings are trimmed to start with the digit),
`label` (the digit), `filename`. Splits follow the FSDD convention: indices 0-4 of every
speaker and digit are `test`, 5-49 `train`.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from cmcd_jax.data import readers

ARCHIVE_URL = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/v1.0.9.tar.gz"
# Size and SHA-256 of the archive, as TFDS registers them for its own `spoken_digit`.
ARCHIVE_INFO = tfds.download.checksums.UrlInfo(
    size=11975353, checksum="8bc44cde129d505cbbb6b365c09f80c663f2aa77578afc634e6141a2f87100c0",
    filename="free-spoken-digit-dataset-1.0.9.tar.gz")
SAMPLE_RATE = 8000
CLIP_SAMPLES = 8000  # 1 s
TEST_INDICES = range(5)
SPLITS = ("train", "test")
WAV_NAME = re.compile(r"(?:^|/)recordings/(\d)_([^_/]+)_(\d+)\.wav$")


def fix_length(samples: np.ndarray, length: int) -> np.ndarray:
    """The first `length` samples, zero-padded at the end when shorter."""
    out = np.zeros(length, np.float32)
    out[:min(length, len(samples))] = samples[:length]
    return out


def is_test(index: int) -> bool:
    """FSDD's split: recordings 0-4 of every speaker and digit are the test set."""
    return index in TEST_INDICES


class CmcdSpokenDigit(tfds.core.GeneratorBasedBuilder):
    """Spoken digits 0-9, 50 takes of each per speaker, as 1 s clips at 8 kHz."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "FSDD v1.0.9, 1 s clips, FSDD train/test split."}
    url_infos = {ARCHIVE_URL: ARCHIVE_INFO}  # downloads are checked against these

    def __init__(self, *, archive: str = "", **kwargs):
        """archive: a local FSDD v1.0.9 tar.gz read instead of downloading `ARCHIVE_URL`."""
        self._archive = archive
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "audio": tfds.features.Tensor(shape=(CLIP_SAMPLES,), dtype=np.float32),
                "label": tfds.features.ClassLabel(num_classes=10),
                "filename": tfds.features.Text(),
            }),
            supervised_keys=("audio", "label"),
            homepage="https://github.com/Jakobovski/free-spoken-digit-dataset",
        )

    def _split_generators(self, dl_manager):
        archive = self._archive or dl_manager.download(ARCHIVE_URL)
        return {"train": self._generate_examples(str(archive), test=False),
                "test": self._generate_examples(str(archive), test=True)}

    def _generate_examples(self, archive: str, test: bool) -> Iterator[tuple[str, dict]]:
        with tarfile.open(archive) as tar:
            for member in tar:
                match = WAV_NAME.search(member.name)
                if not member.isfile() or not match or is_test(int(match[3])) != test:
                    continue
                samples, rate = readers.read_wav(tar.extractfile(member))
                if rate != SAMPLE_RATE:
                    raise ValueError(f"{member.name}: {rate} Hz; expected {SAMPLE_RATE}")
                name = member.name.rsplit("/", 1)[-1]
                yield name[:-len(".wav")], {"audio": fix_length(samples, CLIP_SAMPLES),
                                            "label": int(match[1]), "filename": name}


def load_sources(data_dir: str | None = None, archive: str = "") -> dict:
    """Builds `cmcd_spoken_digit` on first use and returns {split: data source}."""
    builder = CmcdSpokenDigit(data_dir=data_dir or None, file_format="array_record",
                              archive=archive)
    builder.download_and_prepare()
    return dict(zip(SPLITS, builder.as_data_source(split=list(SPLITS))))
