"""The `codegen` command line: build, check, plan, verify, estimate, tune, schema."""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import shlex
import shutil
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from codegen import __version__
from codegen.chips import CHIPS, DEFAULT_CHIP
from codegen.errors import GeneratorBug, Location, SpecError, did_you_mean

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUG = 0, 1, 2, 3


def _overrides(values: list[str]) -> dict[str, object]:
    from codegen.spec import parse_override

    out: dict[str, object] = {}
    for text in values or []:
        name, value = parse_override(text)
        if name in out:  # as with a keyword given twice in a spec: no silent winner
            raise SpecError(f"-D {name} is given twice", COMMAND_LINE)
        out[name] = value
    return out


def _seed(text: str) -> int:
    # numpy's generators take only non-negative seeds.
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative; give an integer from 0 up, e.g. --seed 1")
    return value


INT64_MAX = 2**63 - 1


def _sizes(values: list[str], option: str = "--shape") -> dict[str, int]:
    """`NAME=N` options into a dict; N in ASCII digits (str.isdigit also takes '²',
    which int() refuses) and within int64, as every array dimension is."""
    from codegen.estimate import parse_shapes

    for text in values or []:
        name, sep, value = text.partition("=")
        value = value.strip()
        digits = value.isascii() and value.isdigit()
        if not sep or not name.strip() or not digits or len(value.lstrip("0")) > 19 or int(value) > INT64_MAX:
            shown = repr(text if len(text) <= 60 else text[:60] + "...")
            why = "at most 2**63 - 1, as every array dimension is" if digits else "in the digits 0-9"
            example = "block_m=256" if option == "--block" else "m=2048"
            raise SpecError(f"{option} {shown}: expected NAME=N with N a non-negative integer ({why}), "
                            f"e.g. {option} {example}")
    return parse_shapes(values)


def _interpreter(args) -> str | None:
    """The interpreter --python (else $CODEGEN_TPU_PYTHON) names, checked before any
    work: subprocess would otherwise fail deep inside with a traceback."""
    python, origin = args.python, "--python"
    if python is None:
        python, origin = os.environ.get("CODEGEN_TPU_PYTHON") or None, "$CODEGEN_TPU_PYTHON"
    if python is None:
        return None
    # A bare name is looked up on PATH, as subprocess does.
    found = python if os.sep in python or (os.altsep and os.altsep in python) else shutil.which(python)
    problem = ""
    if "\0" in python:
        problem = "contains a null character"
    elif found is None:
        problem = "not found on PATH"
    elif not os.path.exists(found):
        problem = "no such file"
    elif os.path.isdir(found):
        problem = "is a folder, not an interpreter"
    elif not os.access(found, os.X_OK):
        problem = "is not executable"
    if problem:
        shown = repr(python if len(python) <= 80 else python[:80] + "...")
        raise SpecError(f"{origin} {shown}: {problem}", COMMAND_LINE,
                        "give the path of a Python interpreter, e.g. --python /path/to/venv/bin/python")
    return python


def _add_build_options(p: argparse.ArgumentParser, output: bool = True) -> None:
    p.add_argument("-D", dest="defines", action="append", metavar="NAME=VALUE", default=[],
                   help="override a spec param (repeatable), e.g. -D alpha=0.5")
    p.add_argument("--chip", choices=sorted(CHIPS), default=None,
                   help=f"TPU generation whose VMEM budget the plan must fit "
                        f"(default: [tool.codegen] chip, else {DEFAULT_CHIP})")
    if output:
        p.add_argument("-o", "--output-dir", type=Path, default=None,
                       help="folder for generated modules (default: [tool.codegen] output, "
                            "else generated/ under the spec's project root)")


def _add_compile_options(p: argparse.ArgumentParser, verify: bool = False) -> None:
    if verify:
        # Without --chip, verify compiles for the default chip only where libtpu is installed.
        p.set_defaults(chip=None)
    p.add_argument("--shape", dest="shapes", action="append", metavar="NAME=N", default=[],
                   help="an axis size (or a jagged axis's max) to compile at (repeatable), e.g. --shape m=2048"
                   + ("; compiled on top of the verify shapes" if verify else ""))
    p.add_argument("--python", metavar="PATH", default=None,
                   help="interpreter whose jax and libtpu compile (default: $CODEGEN_TPU_PYTHON, else this one); e.g. a Python 3.12 "
                   "environment with jax[tpu]==0.12.0, whose libtpu profiles v7x")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codegen",
        description="Generate readable JAX Pallas TPU kernels from declarative YAML specs.",
    )
    parser.add_argument("--version", action="version", version=f"codegen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    specs_help = "spec files (default: [tool.codegen] specs in the nearest pyproject.toml)"
    p = sub.add_parser("build", help="generate DIR/<name>.py from each spec")
    p.add_argument("specs", nargs="*", type=Path, metavar="SPEC", help=specs_help)
    _add_build_options(p)

    p = sub.add_parser("check", help="exit 1 with a diff if a generated file is stale; changes nothing")
    p.add_argument("specs", nargs="*", type=Path, metavar="SPEC", help=specs_help)
    _add_build_options(p)

    p = sub.add_parser("plan", help="print the plan: loops, grid, blocks, memory, rules, VMEM")
    p.add_argument("spec", type=Path, metavar="SPEC")
    _add_build_options(p, output=False)

    p = sub.add_parser("verify", help="run the kernel in TPU interpret mode against a reference, and lower it for TPU")
    p.add_argument("spec", type=Path, metavar="SPEC")
    p.add_argument("--seed", type=_seed, default=0, help="random seed for the inputs (default 0)")
    _add_build_options(p, output=False)
    _add_compile_options(p, verify=True)

    p = sub.add_parser("estimate", help="compile for a TPU chip and print the compiler's cost estimate")
    p.add_argument("spec", type=Path, metavar="SPEC")
    _add_build_options(p, output=False)
    _add_compile_options(p)
    p.add_argument("--block", dest="blocks", action="append", metavar="NAME=N", default=[],
                   help="a block size keyword of the entry point (repeatable), e.g. --block block_m=256")

    p = sub.add_parser("tune", help="search block sizes and rule switches by the compiler's estimate; record the winner in the spec")
    p.add_argument("spec", type=Path, metavar="SPEC")
    _add_build_options(p, output=False)
    _add_compile_options(p)
    p.add_argument("--passes", type=int, default=2, help="coordinate-descent passes at most (default 2)")
    p.add_argument("--search", choices=["auto", "grid", "descent"], default="auto",
                   help="grid: try every combination of block sizes before the descent; descent: from the spec's "
                        "blocks alone; auto (default): the grid where it has at most 125 combinations")
    p.add_argument("--dry-run", action="store_true", help="print the winner; leave the spec as it is")
    p.add_argument("--blocks-only", action="store_true",
                   help="search block sizes alone; by default each rule that changes the kernel is tried switched too")

    sub.add_parser("schema", help="print the spec's JSON Schema")
    return parser


COMMAND_LINE = Location("<command line>", 1, 1)
CONFIG_KEYS = {
    "specs": "spec files or glob patterns, relative to pyproject.toml's folder",
    "output": "the folder for generated modules, relative to pyproject.toml's folder",
    "chip": "the TPU generation to plan for",
}


@dataclass
class Config:
    """[tool.codegen] of the nearest pyproject.toml: project-wide defaults for the options."""

    root: Path | None = None  # the folder holding that pyproject.toml
    specs: tuple[Path, ...] = ()
    output: Path | None = None
    chip: str | None = None


def _toml_location(file: Path, text: str, key: str) -> Location:
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith(key):
            return Location(_shown(file), number, line.index(key) + 1)
    return Location(_shown(file), 1, 1)


def _toml_type(value) -> str:
    kinds = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array", dict: "a table"}
    return next((name for kind, name in kinds.items() if isinstance(value, kind)), "a date or time")


def load_config(start: Path | None = None) -> Config:
    """Read [tool.codegen] from the nearest pyproject.toml at or above `start` (the cwd)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        file = folder / "pyproject.toml"
        if file.is_file():
            break
    else:
        return Config()
    try:
        text = file.read_text(encoding="utf-8")
        document = tomllib.loads(text)
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"cannot read {_shown(file)}: {err}", Location(_shown(file), 1, 1)) from None
    except tomllib.TOMLDecodeError as err:
        # tomllib gives the position only inside its message: "... (at line 3, column 7)"
        at = re.search(r"\(at line (\d+), column (\d+)\)", str(err))
        if at:
            loc = Location(_shown(file), int(at[1]), int(at[2]))
        else:  # "(at end of document)"
            lines = text.rstrip("\n").split("\n")
            loc = Location(_shown(file), len(lines), len(lines[-1]) + 1)
        raise SpecError(f"invalid TOML: {str(err).split(' (at ')[0]}", loc) from None
    tool = document.get("tool", {})
    if not isinstance(tool, dict):
        raise SpecError(f"'tool' must be a table (the [tool] section that holds [tool.codegen]), got {_toml_type(tool)}",
                        _toml_location(file, text, "tool"), "remove it, or write it as a [tool.NAME] section")
    table = tool.get("codegen")
    if table is None:
        return Config(root=folder)
    if not isinstance(table, dict):
        raise SpecError(f"[tool.codegen] must be a table of settings, got {_toml_type(table)}",
                        _toml_location(file, text, "codegen"),
                        f"write it as a [tool.codegen] section with the keys {', '.join(CONFIG_KEYS)}")
    for key in table:
        if key not in CONFIG_KEYS:
            raise SpecError(
                f"unknown key '{key}' in [tool.codegen]",
                _toml_location(file, text, key),
                did_you_mean(key, CONFIG_KEYS) or f"keys: {', '.join(CONFIG_KEYS)}",
            )
    specs = table.get("specs", [])
    if isinstance(specs, str):
        specs = [specs]
    if not isinstance(specs, list) or not all(isinstance(s, str) for s in specs):
        raise SpecError("[tool.codegen] specs must be a list of paths or glob patterns", _toml_location(file, text, "specs"))
    for pattern in specs:
        # pathlib refuses both with an exception of its own, deep inside the build
        if "\0" in pattern:
            raise SpecError(f"[tool.codegen] specs: {pattern!r} contains a null character",
                            _toml_location(file, text, "specs"))
        if any(ch in pattern for ch in "*?[") and Path(pattern).is_absolute():
            raise SpecError(f"[tool.codegen] specs: the glob pattern {pattern!r} is absolute; "
                            "patterns are relative to pyproject.toml's folder", _toml_location(file, text, "specs"),
                            "write it relative to the folder of pyproject.toml, e.g. specs = [\"specs/*.yaml\"]")
    paths: list[Path] = []
    for pattern in specs:
        matches = sorted(folder.glob(pattern)) if any(ch in pattern for ch in "*?[") else [folder / pattern]
        if not matches:
            raise SpecError(f"[tool.codegen] specs: '{pattern}' matches no file", _toml_location(file, text, "specs"))
        paths += [m for m in matches if m not in paths]
    output = table.get("output")
    if output is not None and (not isinstance(output, str) or "\0" in output):
        got = f"got {_toml_type(output)}" if not isinstance(output, str) else "not one with a null character"
        raise SpecError(f"[tool.codegen] output must be a path (a string), {got}", _toml_location(file, text, "output"))
    chip = table.get("chip")
    if chip is not None and not isinstance(chip, str):
        raise SpecError(f"[tool.codegen] chip must be a string, one of {', '.join(sorted(CHIPS))}, got {_toml_type(chip)}",
                        _toml_location(file, text, "chip"))
    if chip is not None and chip not in CHIPS:
        raise SpecError(
            f"[tool.codegen] chip must be one of {', '.join(sorted(CHIPS))}, got {chip!r}",
            _toml_location(file, text, "chip"),
        )
    return Config(folder, tuple(paths), folder / output if output is not None else None, chip)


def _shown(path: Path, like: Path | None = None) -> str:
    """A path we computed, shown as the user writes theirs: relative to the cwd,
    unless `like` (the path they gave) is absolute."""
    if not path.is_absolute() or (like is not None and like.is_absolute()):
        return str(path)
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive
        return str(path)


@dataclass
class Job:
    spec: Path  # as given, or from [tool.codegen]
    output_dir: Path  # where its module goes
    explicit_output: Path | None  # -o or [tool.codegen] output; None: the default


def _jobs(args, config: Config) -> list[Job]:
    specs = list(args.specs) or [Path(_shown(p)) for p in config.specs]
    if not specs:
        raise SpecError(
            f"no spec given: name one (codegen {args.command} SPEC...) or list them in [tool.codegen] specs",
            COMMAND_LINE,
        )
    from codegen.build import default_output_dir

    explicit = args.output_dir if args.output_dir is not None else (
        Path(_shown(config.output)) if config.output is not None else None
    )
    if explicit is not None:
        _check_output_dir(explicit)
    return [Job(s, explicit if explicit is not None else Path(_shown(default_output_dir(s), like=s)), explicit) for s in specs]


def _check_output_dir(folder: Path) -> None:
    """Refuse an output folder that is a file, or lies under one, before building anything."""
    from codegen.build import name_too_long, shortened

    try:
        for part in (folder, *folder.parents):
            if part.exists():
                if not part.is_dir():
                    what = "is a file" if part == folder else f"lies under {_shown(part)}, which is a file"
                    raise SpecError(f"-o {shortened(_shown(folder))}: {what}, not a folder", COMMAND_LINE)
                if not os.access(part, os.W_OK | os.X_OK):
                    raise SpecError(f"-o {shortened(_shown(folder))}: {shortened(_shown(part))} is not writable",
                                    COMMAND_LINE)
                break
        # Below the part that exists, a name past the file system's limit fails only once written.
        long = next((p.name for p in (folder, *folder.parents) if name_too_long(p)), None)
    except OSError as err:
        raise SpecError(f"-o {shortened(_shown(folder))}: {err.strerror or err}", COMMAND_LINE,
                        "give a shorter or another output folder") from None
    if long:
        raise SpecError(f"-o {shortened(_shown(folder))}: the name {shortened(long)} is longer than the file system "
                        "allows", COMMAND_LINE, "give a shorter output folder name")


def _chip(args, config: Config) -> str:
    return args.chip or config.chip or DEFAULT_CHIP


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # either is missing, or cannot be a file
        return False


def _current(target: Path) -> bytes | None:
    """The bytes of the file at `target` now, or None where there is none."""
    from codegen.build import shortened

    try:
        return target.read_bytes() if target.is_file() else None
    except OSError as err:
        raise SpecError(f"cannot read {shortened(str(target))}: {err.strerror or err}", COMMAND_LINE) from None


def _build_all(args):
    from codegen.build import build_source, name_too_long, shortened

    config = load_config()
    chip = _chip(args, config)
    jobs = _jobs(args, config)
    overrides = _overrides(args.defines)
    built = []
    targets: dict[Path, Path] = {}
    for job in jobs:
        b = build_source(job.spec, overrides, chip, job.explicit_output)
        target = job.output_dir / f"{b.spec.name}.py"
        if name_too_long(target):
            raise SpecError(f"kernel name '{shortened(b.spec.name)}' ({len(b.spec.name)} characters) is too long for "
                            "the name of its generated file", b.spec.name_loc, "give the kernel a shorter name")
        spec = next((j.spec for j in jobs if _same_file(target, j.spec)), None)
        if spec is not None:  # written, the module would replace the spec it came from
            raise SpecError(f"the generated module {shortened(str(target))} would be the spec {shortened(str(spec))} "
                            "itself", b.spec.name_loc,
                            "give the spec a .yaml name, or another output folder with -o")
        key = Path(os.path.abspath(target))
        if key in targets:
            raise SpecError(
                f"kernel name '{b.spec.name}' is also the name of {targets[key]}: "
                f"both would write {target}",
                b.spec.name_loc,
                "give each spec its own name",
            )
        targets[key] = job.spec
        built.append((job, target, b))
    return built, chip, overrides


def _rebuild_hint(job: Job, chip: str, overrides) -> str:
    """The command that rebuilds `job`'s file, from the current folder."""
    from codegen.render import build_options

    return f"codegen build {shlex.quote(str(job.spec))} -o {shlex.quote(str(job.output_dir))} {build_options(chip, overrides)}"


def _cmd_build(args) -> int:
    started = time.perf_counter()
    built, _, _ = _build_all(args)  # all or nothing: no write before every spec builds
    from codegen.build import write_files

    changed = {}
    for _, target, b in built:
        # Compared as bytes: a file that is not UTF-8 is as stale as any other.
        if _current(target) == b.source.encode("utf-8"):
            print(f"{target}: unchanged")
        else:
            changed[target] = b.source
    write_files(changed)
    for target in changed:
        print(f"{target}: written")
    print(f"built {len(built)} spec{'s' if len(built) != 1 else ''} in {time.perf_counter() - started:.2f}s")
    return EXIT_OK


def _cmd_check(args) -> int:
    built, chip, overrides = _build_all(args)
    stale = 0
    for job, target, b in built:
        raw = _current(target)
        if raw == b.source.encode("utf-8"):
            print(f"{target}: up to date")
            continue
        stale += 1
        current = (raw or b"").decode("utf-8", errors="replace")
        status = "stale" if target.exists() else "missing"
        if raw is not None and current.encode("utf-8") != raw:
            status = "stale (not UTF-8 text)"
        print(f"{target}: {status}; run `{_rebuild_hint(job, chip, overrides)}`", file=sys.stderr)
        sys.stdout.writelines(
            difflib.unified_diff(
                current.splitlines(keepends=True),
                b.source.splitlines(keepends=True),
                fromfile=f"{target} (checked in)",
                tofile=f"{target} (from {b.spec.file})",
            )
        )
    return EXIT_FAILED if stale else EXIT_OK


def _cmd_plan(args) -> int:
    from codegen.build import plan_spec
    from codegen.report import format_plan

    _, plan = plan_spec(args.spec, _overrides(args.defines), _chip(args, load_config()))
    sys.stdout.write(format_plan(plan))
    return EXIT_OK


def _cmd_verify(args) -> int:
    from codegen.build import build_source
    from codegen.tpu_compile import libtpu_installed

    python = _interpreter(args)
    shapes = _sizes(args.shapes)
    chip = _chip(args, load_config())
    built = build_source(args.spec, _overrides(args.defines), chip)
    try:
        import jax  # noqa: F401  (verify needs it; build never does)
        import numpy  # noqa: F401
    except ModuleNotFoundError as err:
        raise SpecError(
            f"codegen verify needs JAX, which is not installed (no module '{err.name}')",
            COMMAND_LINE,
            "install the extra: python3 -m pip install 'tpu-codegen[jax]'",
        ) from None
    compile_for = args.chip or (DEFAULT_CHIP if libtpu_installed(python) else None)
    if (args.chip or args.shapes) and not libtpu_installed(python):
        print("verify --chip/--shape compiles with the TPU compiler, which is not installed: "
              "pip install 'tpu-codegen[tpu]'", file=sys.stderr)
        return EXIT_FAILED
    extra = []
    tuned = built.spec.tune.get(compile_for or "")
    if tuned:  # the shapes the chip's default blocks were tuned at
        from codegen.estimate import case_from_shapes

        extra.append(case_from_shapes(built.plan, tuned.shapes, f"tune.{compile_for} shapes"))
    if shapes:
        from codegen.estimate import case_from_shapes

        extra.append(case_from_shapes(built.plan, shapes, "--shape"))
    from codegen.verify import compile_for_chip, verify_built  # imports jax: only here

    ok = verify_built(built, seed=args.seed, log=print)
    if compile_for:
        ok &= compile_for_chip(built, compile_for, extra, log=print, python=python)
    else:
        print("compile for TPU: skipped, libtpu is not installed (pip install 'tpu-codegen[tpu]')")
    return EXIT_OK if ok else EXIT_FAILED


def _cmd_estimate(args) -> int:
    from codegen.build import build_source
    from codegen.estimate import case_from_shapes, format_estimate
    from codegen.tpu_compile import CompilerUnavailable, profile_kernel

    args.chip = _chip(args, load_config())  # as build's help says: [tool.codegen] chip, else the default
    python = _interpreter(args)
    shapes, blocks = _sizes(args.shapes), _sizes(args.blocks, "--block")
    built = build_source(args.spec, _overrides(args.defines), args.chip)
    case = case_from_shapes(built.plan, shapes)
    from codegen.verify import kernel_to_compile

    print(f"compiling {built.plan.ir.name} for {args.chip} with the compiler's profile on ...", file=sys.stderr, flush=True)
    try:
        result = profile_kernel(kernel_to_compile(built, case, blocks), args.chip, python=python)
    except CompilerUnavailable as err:
        print(err, file=sys.stderr)
        return EXIT_FAILED
    sys.stdout.write(format_estimate(built, case, args.chip, result, blocks))
    return EXIT_OK if result.ok else EXIT_FAILED


def _cmd_tune(args) -> int:
    from codegen.build import build_source
    from codegen.tpu_compile import CompilerUnavailable
    from codegen.tune import block_keyword, spec_to_rewrite, tune, write_tune_entry

    args.chip = _chip(args, load_config())  # as build's help says: [tool.codegen] chip, else the default
    python = _interpreter(args)
    shapes = _sizes(args.shapes)
    overrides = _overrides(args.defines)
    built = build_source(args.spec, overrides, args.chip)
    if not args.dry_run:  # before the search's minutes, not after
        spec_to_rewrite(args.spec)

    def rebuild(rules):
        return build_source(args.spec, overrides, args.chip, rules=rules)

    try:
        tuned = tune(built, shapes, args.chip, python=python, passes=args.passes, log=print,
                     rebuild=None if args.blocks_only else rebuild, search=args.search)
    except CompilerUnavailable as err:
        print(err, file=sys.stderr)
        return EXIT_FAILED
    except (RuntimeError, ValueError) as err:
        print(f"tune {built.plan.ir.name}: {err}", file=sys.stderr)
        return EXIT_FAILED
    shown = " ".join([f"{block_keyword(built.plan, a)}={v}" for a, v in tuned.blocks.items()]
                     + [f"{r}={'on' if on else 'off'}" for r, on in tuned.rules.items()])
    print(f"winner for {args.chip}: {shown} at {tuned.cycles:,} estimated cycles; "
          f"{len(tuned.trials)} candidates compiled in {tuned.seconds:.0f}s")
    if args.dry_run:
        return EXIT_OK
    write_tune_entry(args.spec, built, tuned)
    print(f"{args.spec}: tune.{args.chip} written; run `codegen build {args.spec}`")
    return EXIT_OK


def _cmd_schema(args) -> int:
    from codegen.spec import json_schema

    print(json.dumps(json_schema(), indent=2, sort_keys=True))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = {
        "build": _cmd_build,
        "check": _cmd_check,
        "plan": _cmd_plan,
        "verify": _cmd_verify,
        "estimate": _cmd_estimate,
        "tune": _cmd_tune,
        "schema": _cmd_schema,
    }[args.command]
    try:
        return command(args)
    except SpecError as err:
        print(err, file=sys.stderr)
        return EXIT_USAGE
    except GeneratorBug as err:
        print(f"internal error (a generator bug, not a spec mistake): {err}", file=sys.stderr)
        return EXIT_BUG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
