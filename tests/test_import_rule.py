"""The import direction of docs/architecture.md, checked on the source: eval never imports train, nothing below the
commands imports cli, rag imports nothing of data, models or methods, and inside train/ the objectives and the
engine never import a recipe or the run skeleton."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1] / "thinktune"


def imports(path: Path) -> set[str]:
    """Modules imported at run time (annotations-only imports under `if TYPE_CHECKING:` do not count)."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(n) for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
        for stmt in node.body for n in ast.walk(stmt)
    }  # fmt: skip
    out = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


RULES = [
    ("eval", ("thinktune.train", "thinktune.cli")),
    ("data", ("thinktune.train", "thinktune.eval", "thinktune.cli", "thinktune.serve")),
    ("rag", ("thinktune.data", "thinktune.models", "thinktune.methods", "thinktune.train", "thinktune.eval")),
    ("rag", ("thinktune.cli", "thinktune.serve")),
    ("ui", ("thinktune.cli",)),
    ("methods", ("thinktune.train", "thinktune.eval", "thinktune.cli", "thinktune.serve")),
    ("train/engine", ("thinktune.train.run", "thinktune.train.sft", "thinktune.train.dpo", "thinktune.train.grpo")),
    ("train/objectives", ("thinktune.train.run", "thinktune.train.sft", "thinktune.train.dpo", "thinktune.train.grpo")),
    ("train/objectives", ("thinktune.train.policy", "thinktune.train.rollout")),
]


@pytest.mark.parametrize(("package", "forbidden"), RULES)
def test_nothing_imports_upward(package, forbidden):
    bad = [
        f"{path.relative_to(ROOT.parent)} imports {name}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for name in imports(path)
        if name.startswith(forbidden)
    ]
    assert not bad, "\n".join(bad)
