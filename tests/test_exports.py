"""`cmcd_jax.exports`: an export restored and used as a user's script would, and every Python
block of the README run as written."""

import json
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmcd_jax import checkpoints, defaults, exports
from cmcd_jax.stages import common
from conftest import run_main

REPO = pathlib.Path(__file__).resolve().parents[1]
QUICKSTART = "/tmp/cmcd_quickstart"  # The workdir the README's commands use.


def sketch_export(directory: pathlib.Path) -> tuple[pathlib.Path, dict]:
    """A student export as the quickstart writes it (sketch, 32x32, its default encoder and
    projection head), with random variables: (directory, variables)."""
    config = defaults.default_config()
    spec = common.encoder_spec(config, "sketch", dataset=None)
    head = {"kind": "projection", "hidden_dim": config.model.proj_hidden_dim,
            "out_dim": config.model.proj_dim}
    model = common.build_model(spec, head)
    variables = common.init_variables(model, jax.random.key(3), jnp.zeros((1, 32, 32, 1)))
    meta = common.export_meta(spec, head, "sketch", (32, 32, 1), 64, 800)
    return checkpoints.export_encoder(directory, variables, meta), variables


def test_load_embeds_raw_inputs_like_the_model_on_prepared_ones(tmp_path):
    directory, variables = sketch_export(tmp_path / "export")
    encoder = exports.load(directory)
    raw = np.random.default_rng(0).integers(0, 256, (7, 32, 32), dtype=np.uint8)
    model = common.build_model(encoder.meta["encoder"], encoder.meta["head"])
    features, projected = model.apply(variables, jnp.asarray(raw[..., None] / 255.0,
                                                             jnp.float32), train=False)
    np.testing.assert_allclose(encoder.embed(raw, batch_size=3), features, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(encoder.embed(raw, head=True), projected, rtol=1e-5, atol=1e-5)
    assert encoder.modality == "sketch" and encoder.embed(raw).shape == (7, 64)


def test_load_names_a_wrong_input_shape_and_a_missing_export(tmp_path):
    encoder = exports.load(sketch_export(tmp_path / "export")[0])
    with pytest.raises(ValueError, match=r"inputs of shape \(28, 28, 1\) \(after preparing "
                                         r"sketch\); this export takes \(32, 32, 1\)"):
        encoder.embed(np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(FileNotFoundError, match="no encoder export at .*nowhere"):
        exports.load(tmp_path / "nowhere")


def test_an_audio_export_hears_the_centre_of_clips_of_any_length():
    encoder = exports.Encoder(lambda v, x: (x, x), {}, {"modality": "audio",
                                                        "input_shape": [40]})
    wave = np.arange(1, 101, dtype=np.float32)
    np.testing.assert_array_equal(encoder.prepare([wave]), [wave[30:70]])
    short = encoder.prepare([wave[:10]])[0]  # Zero-padded around its centre.
    np.testing.assert_array_equal(short[15:25], wave[:10])
    assert not short[:15].any() and not short[25:].any()


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("index", range(len(python_blocks((REPO / "README.md").read_text()))))
def test_readme_python_blocks_run_as_written(index, tmp_path, data_dir):
    """Each block runs in a fresh interpreter; the one place it differs from a user's copy is
    the quickstart's workdir, here a folder holding a sketch export where the quickstart
    writes its cmc student. A config file runs through the pipeline, on the tiny config."""
    block = python_blocks((REPO / "README.md").read_text())[index]
    if "def get_config" in block:
        config_file = tmp_path / "my_method.py"
        config_file.write_text(block.replace("default_config()", "tiny_config()"))
        proc = run_main(tmp_path / "run", data_dir, config=str(config_file))
        assert proc.returncode == 0, proc.stderr[-3000:]
        results = json.loads((tmp_path / "run" / "results.json").read_text())
        assert list(results["methods"]) == ["cmc", "cosine", "target_only"]
        metrics = tmp_path / "run" / "distill" / "cosine" / "metrics.jsonl"
        cosine_losses = [json.loads(line)["loss"] for line in metrics.read_text().splitlines()]
        assert all(0.0 <= loss <= 2.0 for loss in cosine_losses)  # A cosine distance.
        return
    if QUICKSTART in block:
        sketch_export(tmp_path / "distill" / "cmc" / "export")
        block = block.replace(QUICKSTART, str(tmp_path))
    result = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip()  # Every block shows its result.


def test_the_readme_blocks_include_the_losses_the_distances_and_an_export():
    blocks = python_blocks((REPO / "README.md").read_text())
    assert any("losses.cmc_loss" in b for b in blocks)
    assert any("analysis.modality_distance" in b for b in blocks)
    assert any("exports.load" in b for b in blocks)
