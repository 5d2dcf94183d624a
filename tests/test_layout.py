"""The floor plan, as imports: the toy world is invisible to production code, and the shared kernel imports no
stage. Read from the source (AST), so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "firellava"
KERNEL = ("core", "engines")
STAGES = ("datagen", "mix", "train", "eval", "serve")


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def floor(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else ""


def modules() -> list[Path]:
    found = sorted(PACKAGE.rglob("*.py"))
    assert len(found) > 40
    return found


def test_no_production_module_imports_the_toy_world():
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(n for n in imports_of(p) if n.startswith("firellava.toy"))
        for p in modules()
        if floor(p) != "toy"
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_kernel_imports_no_stage():
    stage_prefixes = tuple(f"firellava.{s}" for s in (*STAGES, "toy"))
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(n for n in imports_of(p) if n.startswith(stage_prefixes))
        for p in modules()
        if floor(p) in KERNEL
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_one_import_root():
    top = {p.name for p in PACKAGE.parent.iterdir() if (p / "__init__.py").exists()}
    assert top == {"firellava"}


def test_a_stage_imports_no_other_stage():
    offenders = {}
    for p in modules():
        own = floor(p)
        if own in STAGES:
            others = tuple(f"firellava.{s}" for s in STAGES if s != own)
            hits = sorted(n for n in imports_of(p) if n.startswith(others))
            if hits:
                offenders[str(p.relative_to(PACKAGE))] = hits
    assert offenders == {}


def test_nothing_in_the_pipeline_imports_the_notebooks_helpers():
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(n for n in imports_of(p) if n.startswith("firellava.report"))
        for p in modules()
        if floor(p) != "report"
    }
    assert {k: v for k, v in offenders.items() if v} == {}
