"""The pipeline, end to end: spec file -> IR -> plan -> checked, formatted source."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from codegen.ir import lower
from codegen.plan import Plan, make_plan
from codegen.render import render
from codegen.source_check import check_source, format_source
from codegen.spec import Spec, load_spec


def project_root(path: Path) -> Path:
    """The nearest ancestor holding pyproject.toml or .git; else the spec's folder."""
    path = path.resolve()
    for parent in path.parents:
        if (parent / "pyproject.toml").exists() or (parent / ".git").exists():
            return parent
    return path.parent


def display_path(path: Path) -> str:
    """The spec's path as written into headers: relative to its project, with '/'."""
    resolved = path.resolve()
    return resolved.relative_to(project_root(resolved)).as_posix()


@dataclass
class Built:
    spec: Spec
    plan: Plan
    source: str


def plan_spec(path: Path, overrides=None, chip: str = "v5e") -> tuple[Spec, Plan]:
    spec = load_spec(path, display_path(path), overrides)
    return spec, make_plan(lower(spec), chip)


def build_source(path: Path, overrides=None, chip: str = "v5e") -> Built:
    spec, plan = plan_spec(path, overrides, chip)
    rendered = render(plan, spec.file)
    check_source(rendered, spec.file)
    source = format_source(rendered)
    check_source(source, spec.file)
    return Built(spec, plan, source)


def write_atomic(target: Path, text: str) -> None:
    """Replace `target` with `text` in one rename: readers see the old file or the new one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
