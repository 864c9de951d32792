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
        variant = rebuild({rule.name: not now})
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
            fields["compiler"] = f'"{e["compiler"]}"'
        if e.get("rules"):
            fields["rules"] = _flow({name: "on" if on else "off" for name, on in e["rules"].items()})
        lines.append(f"  {chip}: {_flow(fields)}")
    return "\n".join(lines) + "\n"


def write_tune_entry(spec_path: Path, built: Built, tuned: Tuned) -> None:
    """Put `tuned` under the chip in the spec's `tune:` section, keeping the other chips'
    entries and the rest of the file as written."""
    from codegen.build import write_files

    text = spec_path.read_text(encoding="utf-8")
    entries = {
        chip: {"shapes": e.shapes, "blocks": e.blocks, "estimated_cycles": e.estimated_cycles, "compiler": e.compiler,
               "rules": {name: switch.enabled for name, switch in e.rules.items()}}
        for chip, e in built.spec.tune.items()
    }
    entries[tuned.chip] = {"shapes": tuned.shapes, "blocks": tuned.blocks, "estimated_cycles": tuned.cycles,
                           "compiler": tuned.compiler, "rules": tuned.rules}
    # The old section: its `tune:` line and every indented, blank or comment line after it.
    kept = re.sub(r"(?m)^tune:.*\n(?:(?:[ \t]+.*|[ \t]*#.*|[ \t]*)\n)*", "", text)
    if kept and not kept.endswith("\n"):
        kept += "\n"
    write_files({spec_path: kept + tune_section(entries)})
