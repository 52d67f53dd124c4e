"""The package's layers import downward only (checked on the source, imports inside
functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "metavox"

#: lower numbers are lower layers; a module may import its own layer or lower ones
LAYERS = {"storage": 0, "audio": 1, "data": 2, "models": 2, "meta": 3, "engine": 4,
          "pipeline": 5, "kws": 6, "service": 7, "cli": 8}


def _layer(module: str) -> tuple[str, int] | None:
    parts = module.split(".")
    if parts[0] != "metavox" or len(parts) < 2 or parts[1] not in LAYERS:
        return None  # metavox itself (the version) or another package
    return parts[1], LAYERS[parts[1]]


def test_no_module_imports_a_higher_layer():
    wrong = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        own = _layer(".".join(rel.parts))
        if own is None:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module
                     else [])
            for name in names:
                target = _layer(name)
                if target is not None and target[1] > own[1]:
                    wrong.append(f"{rel} ({own[0]}) imports {name} ({target[0]})")
    assert not wrong, "\n".join(wrong)
    # the check sees every layer (a renamed package would make it vacuous)
    assert {p.name for p in SRC.iterdir() if p.is_dir() and p.name in LAYERS} == set(
        LAYERS) - {"storage"}
