"""`cmcd_sketchy`: the Sketchy database's photo/sketch pairs as a manual-download TFDS builder.

Reads the official `rendered_256x256` release (Sangkloy et al. 2016), extracted into the
manual dir (`<data_dir>/downloads/manual` unless one is given). Assumed layout (the public
release's, as its users cite it), under the manual dir or its `rendered_256x256/`:

    256x256/photo/tx_000000000000/<class>/<photo id>.jpg       12,500 photos, 125 classes
    256x256/sketch/tx_000000000000/<class>/<photo id>-<n>.png  sketches of that photo, n = 1..

Only the `tx_000000000000` rendering (the sketch at the photo's scale, not translated) is
used; the other augmented renderings and the lists of flawed sketches are ignored. Photos
without a sketch and sketches without their photo are skipped.

Every record is one sketch with its photo: `image` (the RGB photo, JPEG bytes kept as
they are), `sketch` (grey, composited on white: uint8 (H, W, 1)), `label` (index in the
sorted `CLASS_NAMES`), `photo_id`, `sketch_id`. Split rule: a photo is `test` when the CRC-32
of `<class>/<photo id>` is divisible by 10 (about 10% of the photos), so every sketch of a
photo lands in its photo's split. `train` and `test` hold every sketch;
`train_photos` and `test_photos` hold each photo once, with its lowest-numbered sketch.
"""

from __future__ import annotations

import collections
import zlib
from collections.abc import Iterator

import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

CLASS_NAMES = (
    "airplane", "alarm_clock", "ant", "ape", "apple", "armor", "axe", "banana", "bat", "bear",
    "bee", "beetle", "bell", "bench", "bicycle", "blimp", "bread", "butterfly", "cabin",
    "camel", "candle", "cannon", "car_(sedan)", "castle", "cat", "chair", "chicken", "church",
    "couch", "cow", "crab", "crocodilian", "cup", "deer", "dog", "dolphin", "door", "duck",
    "elephant", "eyeglasses", "fan", "fish", "flower", "frog", "geyser", "giraffe", "guitar",
    "hamburger", "hammer", "harp", "hat", "hedgehog", "helicopter", "hermit_crab", "horse",
    "hot-air_balloon", "hotdog", "hourglass", "jack-o-lantern", "jellyfish", "kangaroo",
    "knife", "lion", "lizard", "lobster", "motorcycle", "mouse", "mushroom", "owl", "parrot",
    "pear", "penguin", "piano", "pickup_truck", "pig", "pineapple", "pistol", "pizza",
    "pretzel", "rabbit", "raccoon", "racket", "ray", "rhinoceros", "rifle", "rocket",
    "sailboat", "saw", "saxophone", "scissors", "scorpion", "sea_turtle", "seagull", "seal",
    "shark", "sheep", "shoe", "skyscraper", "snail", "snake", "songbird", "spider", "spoon",
    "squirrel", "starfish", "strawberry", "swan", "sword", "table", "tank", "teapot",
    "teddy_bear", "tiger", "tree", "trumpet", "turtle", "umbrella", "violin", "volcano",
    "wading_bird", "wheelchair", "windmill", "window", "wine_bottle", "zebra")
PHOTO_DIR = "256x256/photo/tx_000000000000"
SKETCH_DIR = "256x256/sketch/tx_000000000000"
TEST_MODULUS = 10
SPLITS = ("train", "test", "train_photos", "test_photos")


def is_test(class_name: str, photo_id: str) -> bool:
    """The split rule: CRC-32 of '<class>/<photo id>' divisible by `TEST_MODULUS`."""
    return zlib.crc32(f"{class_name}/{photo_id}".encode()) % TEST_MODULUS == 0


def find_root(manual_dir: epath.Path) -> epath.Path:
    """The directory holding `256x256/`: the manual dir itself or its `rendered_256x256/`."""
    for root in (manual_dir, manual_dir / "rendered_256x256"):
        if (root / PHOTO_DIR).is_dir() and (root / SKETCH_DIR).is_dir():
            return root
    raise FileNotFoundError(f"no {PHOTO_DIR} and {SKETCH_DIR} under {manual_dir}; "
                            f"see CmcdSketchy.MANUAL_DOWNLOAD_INSTRUCTIONS")


def class_dirs(root: epath.Path) -> list[str]:
    """The sorted class directories of the photo tree (all must be Sketchy classes)."""
    names = sorted(p.name for p in (root / PHOTO_DIR).iterdir() if p.is_dir())
    unknown = sorted(set(names) - set(CLASS_NAMES))
    if unknown:
        raise ValueError(f"unknown Sketchy classes in {root / PHOTO_DIR}: {unknown}")
    return names


def photo_sketches(root: epath.Path, class_name: str) -> dict[str, list[str]]:
    """{photo id: its sketch ids ('<photo id>-<n>') by ascending n} of one class's photos
    that have a sketch, sorted by photo id."""
    photos = {p.stem for p in (root / PHOTO_DIR / class_name).glob("*.jpg")}
    sketches = collections.defaultdict(list)
    for path in (root / SKETCH_DIR / class_name).glob("*.png"):
        photo_id, _, number = path.stem.rpartition("-")
        if photo_id in photos and number.isdigit():
            sketches[photo_id].append((int(number), path.stem))
    return {photo_id: [stem for _, stem in sorted(s)] for photo_id, s in sorted(sketches.items())}


def grey_on_white(path: epath.Path) -> Image.Image:
    """The image at `path` as 8-bit grey, transparent parts composited on white."""
    with Image.open(path) as image:
        rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("L")


class CmcdSketchy(tfds.core.GeneratorBasedBuilder):
    """Sketchy: 125 classes, 12,500 photos, each with about 6 sketches drawn from it."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "rendered_256x256, tx_000000000000, CRC-32 photo split."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download `rendered_256x256.7z` ("Sketches and Photos") from the Sketchy database,
    https://sketchy.eye.gatech.edu/, and extract it yourself (7z is not read here) into the
    manual dir, e.g. `7z x rendered_256x256.7z -o<data_dir>/downloads/manual`, so that
    `256x256/photo/tx_000000000000/<class>/*.jpg` and
    `256x256/sketch/tx_000000000000/<class>/*.png` lie under the manual dir or under its
    `rendered_256x256/`.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "sketch": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
                "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                "photo_id": tfds.features.Text(),
                "sketch_id": tfds.features.Text(),
            }),
            homepage="https://sketchy.eye.gatech.edu/",
        )

    def _split_generators(self, dl_manager):
        root = find_root(epath.Path(dl_manager.manual_dir))
        return {split: self._generate_examples(root, split.startswith("test"),
                                               split.endswith("_photos"))
                for split in SPLITS}

    def _generate_examples(self, root: epath.Path, test: bool,
                           first_only: bool) -> Iterator[tuple[str, dict]]:
        for class_name in class_dirs(root):
            for photo_id, sketch_ids in photo_sketches(root, class_name).items():
                if is_test(class_name, photo_id) != test:
                    continue
                for sketch_id in sketch_ids[:1] if first_only else sketch_ids:
                    yield f"{class_name}/{sketch_id}", {
                        "image": root / PHOTO_DIR / class_name / f"{photo_id}.jpg",
                        "sketch": grey_on_white(root / SKETCH_DIR / class_name
                                                / f"{sketch_id}.png"),
                        "label": class_name, "photo_id": photo_id, "sketch_id": sketch_id}


def load_sources(data_dir: str | None = None, manual_dir: str | None = None) -> dict:
    """Builds `cmcd_sketchy` from the manual dir on first use; returns {split: data source}."""
    builder = CmcdSketchy(data_dir=data_dir or None, file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir or None))
    return dict(zip(SPLITS, builder.as_data_source(split=list(SPLITS))))
