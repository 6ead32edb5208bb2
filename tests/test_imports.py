"""cmcd_jax.data without import cycles: every module imports alone, the contract imports no
loader, and `sources.LOADERS` resolves every dataset name to its loader. The models import the
CPU layer in one place, and it imports no model."""

import ast
import graphlib
import json
import pathlib
import subprocess
import sys

import pytest

from cmcd_jax import defaults
from cmcd_jax.data import recipes, sources
from conftest import REPO

PACKAGE = REPO / "cmcd_jax"
DATA = PACKAGE / "data"
MODULES = sorted(p.stem for p in DATA.glob("*.py") if p.stem != "__init__")
# The modules loaders build on, and the only data modules each may import.
FOUNDATIONS = {"datasets": set(), "readers": set(), "spatial": set(), "render": set(),
               "modalities": set(), "pipeline": {"modalities"},
               "sources": {"datasets", "modalities"}}


def imported_alone(module: str) -> set[str]:
    """The cmcd_jax.data modules a fresh interpreter holds after importing `module` alone."""
    code = (f"import json, sys; import cmcd_jax.data.{module}; "
            f"print(json.dumps(sorted(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.splitlines()[-1])
    return {m.rpartition(".")[2] for m in loaded if m.startswith("cmcd_jax.data.")}


def package_imports(path: pathlib.Path, package: str = "cmcd_jax.data") -> set[str]:
    """The modules of `package` (a subpackage of cmcd_jax) that `path` imports anywhere,
    function bodies included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == package:
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(f"{package}."):
            names.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            names.update(alias.name.split(".")[2] for alias in node.names
                         if alias.name.startswith(f"{package}."))
    return names


@pytest.mark.parametrize("module", MODULES)
def test_every_data_module_imports_alone(module):
    loaded = imported_alone(module) - {module}
    if module in FOUNDATIONS:
        assert loaded <= FOUNDATIONS[module], f"{module} imports {sorted(loaded)}"


def test_data_modules_and_the_registry_form_no_cycle():
    graph = {module: package_imports(DATA / f"{module}.py") for module in MODULES}
    graph["sources"] |= {target.partition(":")[0].rpartition(".")[2]
                         for target in sources.LOADERS.values()}
    graphlib.TopologicalSorter(graph).prepare()  # CycleError names a cycle.


def test_the_encoders_alone_import_the_cpu_layer_and_it_imports_no_model():
    users = {path.stem: package_imports(path, "cmcd_jax.cpu")
             for path in (PACKAGE / "models").glob("*.py")}
    assert {module: used for module, used in users.items() if used} == {"encoders": {"conv"}}
    assert not any(package_imports(path, "cmcd_jax.models")
                   for path in (PACKAGE / "cpu").glob("*.py"))


def test_every_registered_loader_resolves_and_every_recipe_is_registered():
    assert all(callable(sources.loader(name)) for name in sources.LOADERS)
    registered = {name for name, target in sources.LOADERS.items()
                  if target == "cmcd_jax.data.recipes:from_config"}
    assert registered == set(recipes.RECIPES)


def test_an_unknown_dataset_lists_the_registered_ones():
    config = defaults.default_config()
    config.dataset = "nope"
    with pytest.raises(ValueError, match="config.dataset='nope'; valid: cmcd_shapes, "
                                         "paired_folder, spoken_digit_mnist, nyu_depth_v2, "
                                         "domainnet, sketchy$"):
        sources.load_dataset(config)
