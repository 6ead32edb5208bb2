"""Every path a run reads or writes, local or remote (`gs://bucket/run`), as an
`etils.epath.Path`: the paths orbax, grain and TFDS take. A remote path is read and written
through TensorFlow's gfile when TensorFlow is installed, else through the scheme's fsspec
package (gcsfs for gs://); `backend_problem` says when neither is there."""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterator

from etils import epath

URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
#: The remote schemes epath serves -> (their fsspec protocol, the package implementing it).
REMOTE = {"gs": ("gcs", "gcsfs"), "s3": ("s3", "s3fs"), "az": ("az", "adlfs"),
          "hf": ("hf", "huggingface_hub")}


def scheme(path: str | os.PathLike) -> str | None:
    """'gs' of 'gs://bucket/run'; None for a local path."""
    match = URL.match(os.fspath(path))
    return match.group(1) if match else None


def is_remote(path: str | os.PathLike) -> bool:
    return scheme(path) is not None


def tensorflow_serves() -> bool:
    """Whether epath reads remote paths through TensorFlow's gfile (installed, and not
    turned off by EPATH_USE_TF)."""
    off = os.environ.get("EPATH_USE_TF", "").lower() in ("false", "no", "f", "0")
    return not off and importlib.util.find_spec("tensorflow") is not None


def backend_problem(path: str | os.PathLike) -> str | None:
    """Why this process cannot read or write the remote `path` (its scheme unknown to
    epath, or no package serving it installed); None for a local or a servable path."""
    name = scheme(path)
    if name is None or (name in REMOTE and tensorflow_serves()):
        return None
    if name not in REMOTE:
        return (f"{name}:// is not a scheme etils.epath serves; use "
                f"{', '.join(f'{s}://' for s in REMOTE)} or a local path")
    protocol, package = REMOTE[name]
    try:
        import fsspec

        fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError):
        return f"{name}:// paths need {package} (pip install {package}) or TensorFlow"
    return None


def absolute(path: str | os.PathLike) -> epath.Path:
    """`path` made absolute; a remote path as it is (epath's `absolute` would prefix the
    current directory to gs://...)."""
    return epath.Path(path) if is_remote(path) else epath.Path(os.path.abspath(path))


def resolved(path: str | os.PathLike) -> epath.Path:
    """`path` absolute with its symbolic links resolved; a remote path as it is."""
    return epath.Path(path) if is_remote(path) else epath.Path(os.path.realpath(path))


def tree(root: epath.Path) -> Iterator[epath.Path]:
    """Everything under the directory `root`, at any depth (epath's `glob` refuses `**`);
    symbolic links are listed, not followed (a link to a parent would never end)."""
    for entry in root.iterdir():
        yield entry
        if entry.is_dir() and not os.path.islink(entry):
            yield from tree(entry)


def append_text(path: epath.Path, text: str) -> None:
    """Adds `text` at the end of `path` (created if missing). A remote object cannot be
    appended to: it is rewritten whole."""
    if not is_remote(path):
        with path.open("a") as f:
            f.write(text)
    else:
        path.write_text((path.read_text() if path.exists() else "") + text)
