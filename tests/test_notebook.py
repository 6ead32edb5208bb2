"""launch/colab_quickstart.ipynb runs headless, top to bottom, on the tiny dataset."""

import gc
import json
import sys
import warnings

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync
from nbclient import NotebookClient

from conftest import REPO, main_command

NOTEBOOK = REPO / "launch" / "colab_quickstart.ipynb"
CELL_TIMEOUT_S = 300  # Per cell; the whole notebook takes well under a minute when unloaded.


def test_committed_notebook_is_clean():
    nb = nbformat.read(NOTEBOOK, as_version=nbformat.NO_CONVERT)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata.kernelspec.name == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"commit the notebook with its outputs cleared:\n{cell.source[:200]}")


def outputs_of(cell) -> str:
    """Every text, Markdown and error output of a code cell, joined."""
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type == "error":
            parts.append("\n".join(out.traceback))
        else:
            parts += [out.data.get(k, "") for k in ("text/markdown", "text/plain")]
    return "\n".join(parts)


def test_notebook_runs_the_tiny_quickstart(tmp_path, data_dir):
    workdir = tmp_path / "run"
    _, env = main_command(workdir, data_dir)  # JAX on 1 CPU, the shared compilation cache.
    env.update(CMCD_NOTEBOOK_TINY="1", CMCD_NOTEBOOK_DATA_DIR=str(data_dir),
               CMCD_NOTEBOOK_WORKDIR=str(workdir))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # A kernel spec manager without kernel dirs only knows ipykernel's built-in `python3`,
    # whose argv is this interpreter: no user-level kernelspec can swap the Python.
    km = AsyncKernelManager(kernel_name="python3",
                            kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    assert km.kernel_spec.argv[0] == sys.executable
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    try:
        client.execute(env=env)  # Raises CellExecutionError (cell + traceback) on failure.
    finally:  # A kernel manager we pass in is ours to shut down.
        if km.has_kernel:
            run_sync(km.shutdown_kernel)(now=True)
        del client, km
        with warnings.catch_warnings():  # The kernel client's zmq sockets are collected
            warnings.simplefilter("ignore", ResourceWarning)  # here, not in a later test.
            gc.collect()

    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        assert not [o for o in cell.outputs if o.output_type == "error"], outputs_of(cell)
    text = "\n".join(outputs_of(c) for c in code)
    assert "skipping the install" in text, "the install cell would reinstall the package"
    assert "cmc loss" in text
    assert "[pretrain] step 10/10" in text, text[-3000:]
    tables = [o.data["text/markdown"] for c in code for o in c.outputs
              if o.output_type == "display_data" and "text/markdown" in o.data]
    assert tables and "| cmc |" in tables[-1] and "| target_only |" in tables[-1], tables

    results = json.loads((workdir / "results.json").read_text())
    assert list(results["methods"]) == ["cmc", "target_only"]
    assert json.loads((workdir / "config.json").read_text())["data"]["config_name"] == "tiny"
    for figure in ("figures/modalities.png", "figures/loss_curves.png",
                   "figures/comparison.png", "figures/samples.png",
                   "distill/cmc/embeddings.png"):
        assert (workdir / figure).stat().st_size > 1000, figure
    # Shown: the modalities grid, loss curves, comparison bars, cmc embeddings.
    assert sum("image/png" in o.get("data", {}) for c in code for o in c.outputs) == 4


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
