"""The pipeline, end to end: spec file -> IR -> plan -> checked, formatted source."""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from codegen.chips import DEFAULT_CHIP
from codegen.errors import Location, SpecError
from codegen.ir import lower
from codegen.plan import Plan, make_plan
from codegen.render import build_options, render
from codegen.source_check import check_source, format_source
from codegen.spec import Spec, load_spec

DEFAULT_OUTPUT = "generated"  # under the project root
COMMAND_LINE = Location("<command line>", 1, 1)


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop, say
        raise SpecError(f"cannot resolve the path: {err}", Location(str(path), 1, 1)) from None


def project_root(path: Path) -> Path:
    """The nearest ancestor holding pyproject.toml or .git; else the spec's folder."""
    path = _resolved(path)
    for parent in path.parents:
        if (parent / "pyproject.toml").exists() or (parent / ".git").exists():
            return parent
    return path.parent


def _relative_to_root(path: Path, root: Path) -> str:
    resolved = _resolved(path)
    try:
        return resolved.relative_to(root).as_posix()
    except ValueError:  # outside the project: only an absolute path names it
        return resolved.as_posix()


def display_path(path: Path) -> str:
    """The spec's path as written into headers: relative to its project, with '/'.

    The header is a comment: a path that would break it (a newline in a folder's
    name) is refused rather than written.
    """
    resolved = _resolved(path)
    shown = resolved.relative_to(project_root(resolved)).as_posix()
    if not shown.isprintable():
        raise SpecError(
            "the spec's path contains a control character, which the generated header cannot hold",
            Location(str(path), 1, 1),
            "rename the file or folder",
        )
    return shown


def default_output_dir(spec_path: Path) -> Path:
    """Where a spec's module goes without -o: `generated/` under its project root."""
    return project_root(spec_path) / DEFAULT_OUTPUT


def rebuild_command(spec_path: Path, output_dir: Path | None, chip: str, overrides) -> str:
    """The command, run from the project root, that rebuilds the file exactly."""
    root = project_root(spec_path)
    output = _relative_to_root(output_dir if output_dir is not None else default_output_dir(spec_path), root)
    if not output.isprintable():
        raise SpecError("-o: the output folder's path contains a control character", COMMAND_LINE)
    spec = display_path(spec_path)
    return f"codegen build {shlex.quote(spec)} -o {shlex.quote(output)} {build_options(chip, overrides or {})}"


def shortened(text: str, limit: int = 80) -> str:
    """`text` (a path) cut in the middle to fit a one-line message."""
    return text if len(text) <= limit else f"{text[: limit // 2]}...{text[-(limit // 2 - 3):]}"


def name_too_long(path: Path) -> bool:
    """Whether `path`'s last name is longer than its file system allows, judged on the
    nearest folder above it that exists."""
    limit = 255
    for folder in (path.parent, *path.parent.parents):
        try:
            if folder.is_dir():
                limit = os.pathconf(folder, "PC_NAME_MAX")
                break
        except (OSError, ValueError):  # itself too long, say: look further up
            continue
    return len(os.fsencode(path.name)) > limit


@dataclass
class Built:
    spec: Spec
    plan: Plan
    source: str


def plan_spec(path: Path, overrides=None, chip: str = DEFAULT_CHIP, rules: dict[str, bool] | None = None) -> tuple[Spec, Plan]:
    """The spec and its plan for `chip`, with `rules` (name: on) over its own switches."""
    spec = load_spec(path, display_path(path), overrides, shown_path=str(path))
    return spec, make_plan(lower(spec.for_chip(chip, rules)), chip)


def build_source(path: Path, overrides=None, chip: str = DEFAULT_CHIP, output_dir: Path | None = None,
                 rules: dict[str, bool] | None = None) -> Built:
    """Build one spec's module; `output_dir` (default: the project's generated/) only
    shapes the rebuild command written into the header; `rules` switches rules over the
    spec's own switches (a tuning candidate)."""
    spec, plan = plan_spec(path, overrides, chip, rules)
    rendered = render(plan, spec.file, rebuild_command(path, output_dir, chip, overrides))
    check_source(rendered, spec.file)
    source = format_source(rendered)
    check_source(source, spec.file)
    return Built(spec, plan, source)


# --- writing ----------------------------------------------------------------

def _temp_path(target: Path, kind: str) -> Path:
    # Cut so that a target whose name is near the file system's limit still has one.
    return target.with_name(f".{target.name[:200]}.{secrets.token_hex(4)}.{kind}")


def _stage(target: Path, text: str) -> Path:
    """Write `text` beside `target` under a temporary name, with the mode `target` will keep."""
    temp = _temp_path(target, "tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        if target.exists():
            os.chmod(temp, stat.S_IMODE(target.stat().st_mode))
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def write_files(files: dict[Path, str], shown=str) -> None:
    """Replace every file in `files` with its text, or, on any failure, none of them.

    Every file is first written under a temporary name in its target's folder; only
    when all are staged are they renamed over their targets, the old files kept
    aside until the last rename has succeeded. A failure removes what was staged
    and puts back what was replaced. What no program can prevent: a process killed
    (kill -9, power loss) during the renames leaves some targets new and some old,
    and leaves its `.NAME.py.*.tmp` and `.NAME.py.*.old` files beside them; rerunning
    the build finishes the job, and the leftovers are safe to delete.
    A new file gets mode 0666 less the umask (0644 under umask 022); a replaced
    file keeps its mode.
    """
    created_dirs: list[Path] = []
    staged: dict[Path, Path] = {}
    kept: dict[Path, Path] = {}  # target -> its previous contents, until all renames succeed
    replaced: list[Path] = []
    current = None
    try:
        for target, text in files.items():
            current = target
            if target.is_dir():
                raise IsADirectoryError(21, "Is a directory")
            for parent in reversed([target.parent, *target.parent.parents]):
                if not parent.exists():
                    parent.mkdir()
                    created_dirs.append(parent)
            staged[target] = _stage(target, text)
        for target in staged:
            current = target
            if target.exists():
                kept[target] = _temp_path(target, "old")
                try:
                    os.link(target, kept[target])
                except OSError:  # a file system without hard links
                    shutil.copy2(target, kept[target])
        for target, temp in staged.items():
            current = target
            os.replace(temp, target)
            replaced.append(target)
    except BaseException as err:
        for target in reversed(replaced):
            if target in kept:
                os.replace(kept.pop(target), target)
            else:
                target.unlink(missing_ok=True)
        replaced.clear()
        if isinstance(err, OSError):
            raise SpecError(f"cannot write {shortened(shown(current))}: {err.strerror or err}", COMMAND_LINE) from None
        raise
    finally:
        for temp in (*staged.values(), *kept.values()):
            temp.unlink(missing_ok=True)
        if len(replaced) != len(files):
            for folder in reversed(created_dirs):
                try:
                    folder.rmdir()
                except OSError:
                    pass
