"""The package's layers (README, Layout): each subpackage of efl imports only the layers below it."""
import ast

import pytest

from conftest import REPO

PACKAGE = REPO / "projects" / "EFL" / "efl"
# subpackage -> what of efl it may import; errors.py and evaluation.py are the only top-level modules
BELOW = {
    "losses": set(),
    "modeling": {"losses", "errors"},
    "data": {"losses", "modeling", "errors"},
    "engine": {"losses", "modeling", "data", "errors"},
    "export": {"losses", "modeling", "errors"},
    "config": {"losses", "modeling", "data", "engine", "errors", "evaluation"},
}


def imported_layers(path):
    """The efl subpackages and top-level modules that the module at ``path`` (in a subpackage) imports."""
    layers = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 2:  # from ..layer import x / from .. import layer
            layers |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("efl."):
            layers.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            layers |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("efl.")}
    return layers


def test_the_package_has_only_these_layers():
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == set(BELOW)
    assert {p.name for p in PACKAGE.glob("*.py")} == {"__init__.py", "errors.py", "evaluation.py"}


@pytest.mark.parametrize("layer", sorted(BELOW))
def test_each_layer_imports_only_the_layers_below_it(layer):
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        above = imported_layers(path) - BELOW[layer] - {layer}
        assert not above, f"{path.relative_to(PACKAGE)} imports {', '.join(sorted(above))}"
