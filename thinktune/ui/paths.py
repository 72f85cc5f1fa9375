"""Paths the UI reads or writes stay inside its roots (the runs directory and any given data roots)."""

from __future__ import annotations

from pathlib import Path

from thinktune.errors import UserError


class OutsideRoots(UserError):
    """A path the UI was asked to use lies outside the runs directory and the data roots."""


def confine(path: str | Path, roots: list[Path], base: Path | None = None) -> Path:
    """`path` resolved (relative paths against `base`, default the first root), if it lies inside one of `roots`;
    else OutsideRoots. Symlinks are resolved first, so a link cannot lead out."""
    if not str(path).strip():
        raise OutsideRoots("empty path")
    p = Path(path).expanduser()
    p = (p if p.is_absolute() else (base or roots[0]) / p).resolve()
    for root in roots:
        if p == root.resolve() or p.is_relative_to(root.resolve()):
            return p
    shown = ", ".join(str(r) for r in roots)
    raise OutsideRoots(f"{path}: outside the directories this UI may use ({shown})")


def run_name_ok(name: str) -> str:
    """A run name usable as one folder under the runs directory."""
    name = name.strip()
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise OutsideRoots(f"run name {name!r}: give one folder name (letters, digits, - _ .), no slashes")
    return name
