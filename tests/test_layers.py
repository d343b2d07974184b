"""The package layer rule (docs/design.md, "Layers"): each package of `netvm` imports only
itself and the packages below it, so the dependency graph has one direction."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.harness import ROOT

PACKAGE = ROOT / "netvm"

# Lowest first. `netvm` itself (its version) sits below them all.
LAYERS = (
    "core",
    "board",
    "guest",
    "microkit",
    "builder",
    "container",
    "sim",
    "target",
    "bench",
)


def imported_packages(path: Path) -> set[str]:
    """Every `netvm.<package>` the module imports, at top level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "netvm":
                continue
            if len(parts) > 1:
                found.add(parts[1])
            else:  # from netvm import x: x is a package (or the version)
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "netvm" and len(parts) > 1:
                    found.add(parts[1])
    return found - {"__version__"}


def test_every_module_belongs_to_a_layer() -> None:
    loose = sorted(
        p.name for p in PACKAGE.iterdir() if p.suffix == ".py" and p.name != "__init__.py"
    )
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert loose == [], f"modules outside any package: {loose}"
    assert packages == set(LAYERS)


@pytest.mark.parametrize("package", LAYERS)
def test_package_imports_only_itself_and_lower_layers(package: str) -> None:
    rank = LAYERS.index(package)
    bad = {
        f"{path.relative_to(PACKAGE.parent)} imports netvm.{imported}"
        for path in sorted((PACKAGE / package).rglob("*.py"))
        for imported in imported_packages(path)
        if imported not in LAYERS or LAYERS.index(imported) > rank
    }
    assert not bad, "\n".join(sorted(bad))


def test_the_rule_catches_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from netvm.target.qemu import x\n")
    assert imported_packages(module) == {"target"}
