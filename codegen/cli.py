"""The `codegen` command line: build, check, plan, verify, estimate, tune, schema."""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import time
from pathlib import Path

from codegen import __version__
from codegen.chips import CHIPS, DEFAULT_CHIP
from codegen.errors import GeneratorBug, SpecError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUG = 0, 1, 2, 3


def _overrides(values: list[str]) -> dict[str, object]:
    from codegen.spec import parse_override

    out: dict[str, object] = {}
    for text in values or []:
        name, value = parse_override(text)
        out[name] = value
    return out


def _add_build_options(p: argparse.ArgumentParser, output: bool = True) -> None:
    p.add_argument("-D", dest="defines", action="append", metavar="NAME=VALUE", default=[],
                   help="override a spec param (repeatable), e.g. -D alpha=0.5")
    p.add_argument("--chip", choices=sorted(CHIPS), default=DEFAULT_CHIP,
                   help=f"TPU generation whose VMEM budget the plan must fit (default {DEFAULT_CHIP})")
    if output:
        p.add_argument("-o", "--output-dir", type=Path, default=Path("generated"),
                       help="folder for generated modules (default: generated/)")


def _add_compile_options(p: argparse.ArgumentParser, verify: bool = False) -> None:
    if verify:
        # Without --chip, verify compiles for the default chip only where libtpu is installed.
        p.set_defaults(chip=None)
    p.add_argument("--shape", dest="shapes", action="append", metavar="NAME=N", default=[],
                   help="an axis size (or a jagged axis's max) to compile at (repeatable), e.g. --shape m=2048"
                   + ("; compiled on top of the verify shapes" if verify else ""))
    p.add_argument("--python", metavar="PATH", default=os.environ.get("CODEGEN_TPU_PYTHON"),
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

    p = sub.add_parser("build", help="generate DIR/<name>.py from each spec")
    p.add_argument("specs", nargs="+", type=Path, metavar="SPEC")
    _add_build_options(p)

    p = sub.add_parser("check", help="exit 1 with a diff if a generated file is stale; changes nothing")
    p.add_argument("specs", nargs="+", type=Path, metavar="SPEC")
    _add_build_options(p)

    p = sub.add_parser("plan", help="print the plan: loops, grid, blocks, memory, rules, VMEM")
    p.add_argument("spec", type=Path, metavar="SPEC")
    _add_build_options(p, output=False)

    p = sub.add_parser("verify", help="run the kernel in TPU interpret mode against a reference, and lower it for TPU")
    p.add_argument("spec", type=Path, metavar="SPEC")
    p.add_argument("--seed", type=int, default=0, help="random seed for the inputs (default 0)")
    _add_build_options(p, output=False)
    _add_compile_options(p, verify=True)

    p = sub.add_parser("estimate", help="compile for a TPU chip and print the compiler's cost estimate")
    p.add_argument("spec", type=Path, metavar="SPEC")
    _add_build_options(p, output=False)
    _add_compile_options(p)
    p.add_argument("--block", dest="blocks", action="append", metavar="NAME=N", default=[],
                   help="a block size keyword of the entry point (repeatable), e.g. --block block_m=256")

    p = sub.add_parser("tune", help="search block sizes by the compiler's estimate; record the winner in the spec")
    p.add_argument("spec", type=Path, metavar="SPEC")
    _add_build_options(p, output=False)
    _add_compile_options(p)
    p.add_argument("--passes", type=int, default=2, help="coordinate-descent passes at most (default 2)")
    p.add_argument("--dry-run", action="store_true", help="print the winner; leave the spec as it is")

    sub.add_parser("schema", help="print the spec's JSON Schema")
    return parser


def _build_all(specs: list[Path], defines, chip):
    from codegen.build import build_source

    overrides = _overrides(defines)
    return [build_source(path, overrides, chip) for path in specs]


def _cmd_build(args) -> int:
    started = time.perf_counter()
    built = _build_all(args.specs, args.defines, args.chip)  # all or nothing: no write before every spec builds
    from codegen.build import write_atomic

    for b in built:
        target = args.output_dir / f"{b.spec.name}.py"
        if target.exists() and target.read_text(encoding="utf-8") == b.source:
            print(f"{target}: unchanged")
            continue
        write_atomic(target, b.source)
        print(f"{target}: written")
    print(f"built {len(built)} spec{'s' if len(built) != 1 else ''} in {time.perf_counter() - started:.2f}s")
    return EXIT_OK


def _cmd_check(args) -> int:
    built = _build_all(args.specs, args.defines, args.chip)
    stale = 0
    for b in built:
        target = args.output_dir / f"{b.spec.name}.py"
        current = target.read_text(encoding="utf-8") if target.exists() else ""
        if current == b.source:
            print(f"{target}: up to date")
            continue
        stale += 1
        status = "stale" if target.exists() else "missing"
        print(f"{target}: {status}; run `codegen build {b.spec.file}`", file=sys.stderr)
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

    _, plan = plan_spec(args.spec, _overrides(args.defines), args.chip)
    sys.stdout.write(format_plan(plan))
    return EXIT_OK


def _cmd_verify(args) -> int:
    from codegen.build import build_source
    from codegen.tpu_compile import libtpu_installed

    chip = args.chip or DEFAULT_CHIP
    built = build_source(args.spec, _overrides(args.defines), chip)
    compile_for = args.chip or (DEFAULT_CHIP if libtpu_installed(args.python) else None)
    if (args.chip or args.shapes) and not libtpu_installed(args.python):
        print("verify --chip/--shape compiles with the TPU compiler, which is not installed: "
              "pip install 'tpu-codegen[tpu]'", file=sys.stderr)
        return EXIT_FAILED
    extra = []
    tuned = built.spec.tune.get(compile_for or "")
    if tuned:  # the shapes the chip's default blocks were tuned at
        from codegen.estimate import case_from_shapes

        extra.append(case_from_shapes(built.plan, tuned.shapes, f"tune.{compile_for} shapes"))
    if args.shapes:
        from codegen.estimate import case_from_shapes, parse_shapes

        extra.append(case_from_shapes(built.plan, parse_shapes(args.shapes), "--shape"))
    from codegen.verify import compile_for_chip, verify_built  # imports jax: only here

    ok = verify_built(built, seed=args.seed, log=print)
    if compile_for:
        ok &= compile_for_chip(built, compile_for, extra, log=print, python=args.python)
    else:
        print("compile for TPU: skipped, libtpu is not installed (pip install 'tpu-codegen[tpu]')")
    return EXIT_OK if ok else EXIT_FAILED


def _cmd_estimate(args) -> int:
    from codegen.build import build_source
    from codegen.estimate import case_from_shapes, format_estimate, parse_shapes
    from codegen.tpu_compile import CompilerUnavailable, profile_kernel

    built = build_source(args.spec, _overrides(args.defines), args.chip)
    case = case_from_shapes(built.plan, parse_shapes(args.shapes))
    blocks = parse_shapes(args.blocks)
    from codegen.verify import kernel_to_compile

    print(f"compiling {built.plan.ir.name} for {args.chip} with the compiler's profile on ...", file=sys.stderr, flush=True)
    try:
        result = profile_kernel(kernel_to_compile(built, case, blocks), args.chip, python=args.python)
    except CompilerUnavailable as err:
        print(err, file=sys.stderr)
        return EXIT_FAILED
    sys.stdout.write(format_estimate(built, case, args.chip, result, blocks))
    return EXIT_OK if result.ok else EXIT_FAILED


def _cmd_tune(args) -> int:
    from codegen.build import build_source
    from codegen.estimate import parse_shapes
    from codegen.tpu_compile import CompilerUnavailable
    from codegen.tune import block_keyword, tune, write_tune_entry

    built = build_source(args.spec, _overrides(args.defines), args.chip)
    shapes = parse_shapes(args.shapes)
    try:
        tuned = tune(built, shapes, args.chip, python=args.python, passes=args.passes, log=print)
    except CompilerUnavailable as err:
        print(err, file=sys.stderr)
        return EXIT_FAILED
    except (RuntimeError, ValueError) as err:
        print(f"tune {built.plan.ir.name}: {err}", file=sys.stderr)
        return EXIT_FAILED
    shown = " ".join(f"{block_keyword(built.plan, a)}={v}" for a, v in tuned.blocks.items())
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
