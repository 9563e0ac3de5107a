"""`lorasp_core`'s lazy re-exports: the names type checkers see (the `TYPE_CHECKING` imports) are exactly
the names `__getattr__` resolves at run time, from the same modules, and each resolves."""

from __future__ import annotations

import ast
from pathlib import Path

import lorasp_core


def _type_checking_imports() -> dict[str, str]:
    tree = ast.parse(Path(lorasp_core.__file__).read_text())
    block = next(
        node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    )
    return {
        alias.asname or alias.name: str(node.module)
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }


def test_type_checking_imports_match_the_lazy_exports() -> None:
    assert _type_checking_imports() == lorasp_core._EXPORTS
    assert sorted(lorasp_core.__all__) == sorted(lorasp_core._EXPORTS) == lorasp_core.__all__


def test_every_export_resolves_to_its_module_attribute() -> None:
    import importlib

    for name, module in lorasp_core._EXPORTS.items():
        assert getattr(lorasp_core, name) is getattr(importlib.import_module(module), name)
