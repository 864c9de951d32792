"""`codegen tune`: search block sizes with the TPU compiler's own estimate.

Each candidate is compiled for the chip in a fresh child process with the static
profile on (codegen.tpu_compile.profile_kernel), at the shapes given, and scored by
its estimated cycles. Where the blocked axes' candidate sizes make at most GRID_LIMIT
combinations, every one is tried first (the grid search): an axis's best size
depends on the others', and one axis at a time stalls where a good combination
needs several to move at once (matmul_bias_gelu on v6e: from m 2048 / n 1024 / k 512
at 68,575 cycles, no single axis improves, while m 1024 / n 1024 / k 2048 is at
49,647). Then coordinate descent from the best so far: for one blocked axis at a
time, every candidate size is tried with the others held, and the best kept; then
each switchable rule is tried the other way at the best blocks (`rule_candidates`);
passes repeat until one changes nothing (or `passes` run out).

The winner goes into the spec's `tune:` section under the chip, with the shapes it
was tuned at, its estimate, and the rules it switched. Nothing else reads the compiler: a build stays
offline and deterministic, taking that entry's blocks as the entry point's defaults
when it builds for that chip.
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from codegen.build import Built
from codegen.errors import SpecError
from codegen.estimate import case_from_shapes, data_dependent_note, shapes_text
from codegen.plan import Plan
from codegen.rules import RULES
from codegen.verify import Case, kernel_to_compile

SIZES = (128, 256, 512, 1024, 2048)
# Five sizes on each of three axes: at a few seconds a compile, minutes per chip.
GRID_LIMIT = 125
SEARCHES = ("auto", "grid", "descent")  # auto: the grid where it is at most GRID_LIMIT
PAGES_PER_BLOCK = (1, 2, 4, 8, 16, 32)


def block_keyword(plan: Plan, axis: str) -> str:
    return "pages_per_compute_block" if plan.axes[axis].mode == "paged" else f"block_{axis}"


def tunable_axes(plan: Plan) -> list[str]:
    """The axes whose block size is an entry-point keyword."""
    grid = plan.grid + plan.pipeline_grid
    blocked = [a for a in grid if plan.axes[a].blocked]
    return blocked + [a for a, ap in plan.axes.items() if ap.mode == "paged" and a not in blocked]


def candidates(plan: Plan, case: Case, axis: str) -> list[int]:
    """Sizes worth trying along `axis` at `case`: aligned, and none past the extent."""
    ap, info = plan.axes[axis], plan.ir.axes[axis]
    if ap.mode == "paged":
        table = next(t for t in plan.ir.tensors.values() if t.name == info.paged.table)
        pages = case.sizes[table.dims[1]]
        return sorted({n for n in PAGES_PER_BLOCK if pages % n == 0} | {ap.block})
    extent = case.maxima[info.jagged.max] if info.jagged else case.sizes[axis]
    sizes = {n for n in SIZES if n % ap.alignment == 0 and n < extent}
    if extent <= max(SIZES):
        sizes.add(extent)  # one block over the whole extent
    return sorted(sizes | {min(ap.block, extent)})


def spec_rule_state(built: Built, name: str) -> bool:
    """Whether the spec, without any tune entry, has rule `name` on."""
    switch = built.spec.rules.get(name)
    return switch.enabled if switch is not None else next(r for r in RULES if r.name == name).on_by_default


def rule_candidates(built: Built, rebuild: Callable[[dict[str, bool]], Built]) -> tuple[dict[str, Built], list[str]]:
    """The rules worth trying the other way, each with its build ({name: build with it
    switched}), and why the others are not tried.

    A rule is tried off where it is on, and on where it is off unless the spec's own
    `rules:` turned it off; not where switching it leaves the source as it is, where it
    would change which axes have blocks (the search's coordinates), or where the rule
    says why not (`Rule.kept_on_by_tune`). So tuning never turns on what the spec's
    author turned off, nor lets a rule go where the spec has not allowed it (snake_order
    over declared accumulators).
    """
    plan = built.plan
    tried, skipped = {}, []
    for rule in RULES:
        now = plan.rules_enabled[rule.name]
        off_by_the_author = rule.name in built.spec.rules and not built.spec.rules[rule.name].enabled
        if not now and off_by_the_author:
            continue
        try:
            variant = rebuild({rule.name: not now})
        except SpecError as err:  # e.g. a rank-1 jagged tensor needs aligned_tiles
            skipped.append(f"{rule.name}: the spec does not build with it switched: {err.message}")
            continue
        if variant.source == built.source:
            continue
        if now and rule.kept_on_by_tune(plan):
            skipped.append(f"{rule.name}: never switched off by tuning: {rule.kept_on_by_tune(plan)}")
            continue
        if tunable_axes(variant.plan) != tunable_axes(plan):
            skipped.append(f"{rule.name}: switching it changes which axes have blocks")
            continue
        tried[rule.name] = variant
    return tried, skipped


@dataclass
class Trial:
    blocks: dict[str, int]
    cycles: int | None
    seconds: float
    why_not: str = ""
    rules: dict[str, bool] = field(default_factory=dict)  # the rules switched from the base build


@dataclass
class Tuned:
    chip: str
    shapes: dict[str, int]  # as given
    case: Case
    blocks: dict[str, int]  # axis -> size
    cycles: int
    compiler: str
    trials: list[Trial]
    seconds: float
    # The winner's rules that differ from the spec's own switches, to record per chip.
    rules: dict[str, bool] = field(default_factory=dict)
    rules_tried: list[str] = field(default_factory=list)


def tune(built: Built, shapes: dict[str, int], chip: str, python: str | None = None, passes: int = 2,
         log=print, rebuild: Callable[[dict[str, bool]], Built] | None = None, search: str = "auto") -> Tuned:
    """Search blocks, and with `rebuild` (a build of the spec for `chip` with rules
    switched: {name: on}) the rules worth switching, by the compiler's estimate.
    `search` is one of SEARCHES."""
    from codegen.tpu_compile import profile_kernel

    plan = built.plan
    case = case_from_shapes(plan, shapes, "tune")
    axes = tunable_axes(plan)
    if not axes:
        raise ValueError(f"{plan.ir.name} has no block sizes to tune")
    note = data_dependent_note(plan)
    if note:
        log(f"caution: {note}")
    variants, skipped = rule_candidates(built, rebuild) if rebuild else ({}, [])
    started = time.perf_counter()
    trials: dict[tuple, Trial] = {}
    compiler = ""

    def score(blocks: dict[str, int], rules: dict[str, bool]) -> Trial:
        nonlocal compiler
        key = (tuple(sorted(blocks.items())), tuple(sorted(rules.items())))
        if key in trials:
            return trials[key]
        variant = rebuild(rules) if rules else built
        kwargs = {block_keyword(plan, a): n for a, n in blocks.items()}
        shown = " ".join([f"{k}={v}" for k, v in kwargs.items()] + [f"{r}={'on' if v else 'off'}" for r, v in rules.items()])
        log(f"  [{len(trials) + 1}] {shown} ...", end="", flush=True)
        result = profile_kernel(kernel_to_compile(variant, case, kwargs), chip, python=python)
        if result.libtpu_version:  # a compiler that crashed said nothing of itself
            compiler = compiler or f"libtpu {result.libtpu_version}"
        if result.ok and result.estimated_cycles is not None:
            trial = Trial(dict(blocks), result.estimated_cycles, result.seconds, rules=dict(rules))
            log(f" {result.estimated_cycles:,} cycles ({result.seconds:.1f}s)")
        else:
            why = result.error.splitlines()[0] if not result.ok else result.profile_error or result.profile_gap or "no estimate"
            trial = Trial(dict(blocks), None, result.seconds, why, dict(rules))
            log(f" skipped: {why[:160]}")
        trials[key] = trial
        return trial

    def better(trial: Trial, best: Trial) -> bool:
        return trial.cycles is not None and (best.cycles is None or trial.cycles < best.cycles)

    log(f"tune {plan.ir.name} for {chip} at {shapes_text(case)}: axes {', '.join(axes)}"
        + (f"; rules {', '.join(variants)}" if variants else ""))
    for line in skipped:
        log(f"  not tried: {line}")
    best = score({a: min(plan.axes[a].block, candidates(plan, case, a)[-1]) for a in axes}, {})
    grid = [dict(zip(axes, sizes)) for sizes in itertools.product(*(candidates(plan, case, a) for a in axes))]
    if search == "grid" or (search == "auto" and len(grid) <= GRID_LIMIT):
        log(f"grid: every combination of block sizes, {len(grid)} in all")
        for blocks in grid:
            trial = score(blocks, {})
            if better(trial, best):
                best = trial
    elif search == "auto":
        log(f"descent: {len(grid)} combinations of block sizes are more than the grid's {GRID_LIMIT}")
    for n in range(passes):
        changed = False
        for axis in axes:
            for size in candidates(plan, case, axis):
                trial = score(best.blocks | {axis: size}, best.rules)
                if better(trial, best):
                    best, changed = trial, True
        for name in variants:
            rules = dict(best.rules)
            if name in rules:
                del rules[name]  # back to the base build's state
            else:
                rules[name] = not plan.rules_enabled[name]
            trial = score(best.blocks, rules)
            if better(trial, best):
                best, changed = trial, True
        shown = " ".join([f"{block_keyword(plan, a)}={v}" for a, v in best.blocks.items()]
                         + [f"{r}={'on' if v else 'off'}" for r, v in best.rules.items()])
        log(f"pass {n + 1}: best {shown} at {best.cycles:,} cycles" if best.cycles else f"pass {n + 1}: no candidate compiled")
        if not changed:
            break
    if best.cycles is None:
        raise RuntimeError(f"no candidate compiled and profiled for {chip}: {best.why_not}")
    # What the build for the chip needs, over the spec's own switches.
    final = {r.name: best.rules.get(r.name, plan.rules_enabled[r.name]) for r in RULES}
    entry_rules = {name: on for name, on in final.items() if on != spec_rule_state(built, name)}
    return Tuned(chip, dict(shapes), case, best.blocks, best.cycles, compiler, list(trials.values()),
                 time.perf_counter() - started, entry_rules, list(variants))


# --- writing the spec's tune: section -------------------------------------------

_HEADER = ("tune:  # by `codegen tune`: the best blocks (and rule switches) per chip at these shapes; "
           "a build for the chip defaults to them")
_LAYOUT_HINT = ("add a block-style `tune:` section (`tune:` at the start of a line, the chips indented under it, "
                "before any '...' line), or rewrite the spec in block style, one top-level `key:` a line")
_OLD_SECTION = re.compile(r"(?m)^tune:.*(?:\n|\Z)(?:(?:[ \t]+.*|[ \t]*#.*|[ \t]*\r?)(?:\n|\Z))*")


def _flow(mapping: dict[str, object]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in mapping.items()) + "}"


def tune_section(entries: dict[str, dict]) -> str:
    lines = [_HEADER]
    for chip in sorted(entries):
        e = entries[chip]
        fields = {"shapes": _flow(e["shapes"]), "blocks": _flow(e["blocks"])}
        if e.get("estimated_cycles"):
            fields["estimated_cycles"] = e["estimated_cycles"]
        if e.get("compiler"):
            # JSON's string is a YAML double-quoted scalar: its quotes and backslashes escaped.
            import json

            fields["compiler"] = json.dumps(e["compiler"])
        if e.get("rules"):
            fields["rules"] = _flow({name: "on" if on else "off" for name, on in e["rules"].items()})
        lines.append(f"  {chip}: {_flow(fields)}")
    return "\n".join(lines) + "\n"


def _entries(spec) -> dict[str, dict]:
    return {
        chip: {"shapes": e.shapes, "blocks": e.blocks, "estimated_cycles": e.estimated_cycles, "compiler": e.compiler,
               "rules": {name: switch.enabled for name, switch in e.rules.items()}}
        for chip, e in spec.tune.items()
    }


def _as_written(entries: dict[str, dict]) -> dict[str, dict]:
    """`entries` as they read back from tune_section's text, which leaves out what is empty."""
    return {chip: {**e, "estimated_cycles": e.get("estimated_cycles") or None, "compiler": e.get("compiler") or "",
                   "rules": dict(e.get("rules") or {})}
            for chip, e in entries.items()}


def _layout_problem(text: str) -> tuple[str, int] | None:
    """Why a `tune:` section put in place of the old one, or else at the end of `text`,
    would not be part of the spec's top-level mapping (and on which line), or None
    where it would."""
    old = _OLD_SECTION.search(text)
    old_line = text.count("\n", 0, old.start()) + 1 if old else None
    started = False
    for number, line in enumerate(text.splitlines(), 1):
        body = line.rstrip()
        if not started:
            if not body or body.lstrip().startswith("#") or body.startswith("%"):
                continue
            if re.match(r"---(\s|$)", body):
                rest = body[3:].strip()
                if not rest or rest.startswith("#"):
                    continue
                if not rest.startswith(("{", "[")):
                    return "the spec's first key is on its '---' line", number
                body = rest
            started = True
            if body.startswith(("{", "[")):
                return "the spec is written as one flow mapping ({...})", number
            if body[0] in " \t":
                return "the spec's top-level keys are indented", number
        elif re.match(r"(\.\.\.|---)(\s|$)", body) and (old_line is None or old_line > number):
            return f"line {number} ends the YAML document ('{body[:3]}'): a section after it is not part of the spec", number
    return None


def spec_to_rewrite(spec_path: Path) -> Path:
    """The file tune writes for `spec_path`: through a symlink to its target, so that
    the link stays a link; refused where the spec is read-only or laid out so that a
    `tune:` section cannot be added to it as text."""
    import os
    import shlex
    import stat

    from codegen.errors import Location, SpecError

    where = Location(str(spec_path), 1, 1)
    try:
        target = spec_path.resolve(strict=True)
        mode = target.stat().st_mode
        text = target.read_bytes().decode("utf-8")
    except (OSError, RuntimeError) as err:
        raise SpecError(f"cannot read spec: {getattr(err, 'strerror', None) or err}", where) from None
    except UnicodeDecodeError:
        raise SpecError("the spec is not UTF-8 text", where) from None
    # A rename over it would ignore its mode; and root's os.access says writable whatever the mode.
    if not os.access(target, os.W_OK) or not mode & stat.S_IWUSR:
        raise SpecError("the spec is read-only; tune writes its winner into the spec", where,
                        f"make it writable (chmod u+w {shlex.quote(str(spec_path))}), or tune with --dry-run")
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise SpecError(f"the spec's folder {target.parent} is not writable; tune replaces the spec with a new file "
                        "there", where, "make the folder writable, or tune with --dry-run")
    problem = _layout_problem(text)
    if problem:
        raise SpecError(f"cannot add a tune entry to the spec as it is laid out: {problem[0]}",
                        Location(str(spec_path), problem[1], 1), _LAYOUT_HINT)
    return target


def write_tune_entry(spec_path: Path, built: Built, tuned: Tuned) -> None:
    """Put `tuned` under the chip in the spec's `tune:` section, keeping the other chips'
    entries and the rest of the file as written (its line endings and mode included)."""
    from codegen.build import write_files
    from codegen.errors import Location, SpecError
    from codegen.spec import parse_spec

    target = spec_to_rewrite(spec_path)
    text = target.read_bytes().decode("utf-8")
    newline = "\r\n" if "\r\n" in text else "\n"
    entries = _entries(built.spec)
    entries[tuned.chip] = {"shapes": tuned.shapes, "blocks": tuned.blocks, "estimated_cycles": tuned.cycles,
                           "compiler": tuned.compiler, "rules": tuned.rules}
    section = tune_section(entries).replace("\n", newline)
    # The old section (its `tune:` line and every indented, blank or comment line after
    # it) is replaced where it stands; without one, the section goes at the end.
    old = _OLD_SECTION.search(text)
    if old:
        new_text = text[: old.start()] + section + _OLD_SECTION.sub("", text[old.end():])
    else:
        new_text = text + (newline if text and not text.endswith("\n") else "") + section
    # What the text edit made is checked by the loader itself before it replaces the spec.
    problem = ""
    try:
        again = parse_spec(new_text, str(spec_path), built.spec.overrides or None)
    except SpecError as err:
        problem = f"the spec would no longer load ({err.message})"
    else:
        if _as_written(_entries(again)) != _as_written(entries):
            problem = "the spec would not read back with the entries written"
    if problem:
        raise SpecError(f"cannot add a tune entry to the spec as it is laid out: {problem}",
                        Location(str(spec_path), 1, 1), _LAYOUT_HINT)
    write_files({target: new_text}, shown=lambda _: str(spec_path))
