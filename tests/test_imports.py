"""Dependencies point one way: app, smtp_receiver, queue_runner -> tmail; never back."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROCESSES = {"app", "smtp_receiver", "queue_runner"}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(PROCESSES | {"tmail"}))
def test_packages_import_only_the_core(package: str) -> None:
    forbidden = PROCESSES - {package}
    for path in sorted((REPO / package).rglob("*.py")):
        assert not imported_packages(path) & forbidden, f"{path} imports {forbidden}"
