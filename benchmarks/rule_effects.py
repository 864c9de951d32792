"""Each switchable planner rule on and off, by the TPU compiler's own static estimate.

Usage:
  PYTHONPATH=. python benchmarks/rule_effects.py [--chips v5e v6e v7x] [--rules NAME ...] \
      [--specs NAME ...] [--python PATH] > benchmarks/rule_effects_results.md

For each pair in PAIRS (a rule, a spec, the shapes and blocks to compile at), on each
chip, the spec is built twice for that chip, once with `rules: {RULE: on}` and once with
`rules: {RULE: off}`, and both kernels are compiled with libtpu's static profile on
(compiler_estimates.profile, so in fresh child processes) at the same shapes and blocks. The
table gives the estimated cycles, spills and fills and scoped VMEM of both; the summary below
it is computed from the table. Whether the rule fired is read from the plan's decisions: a
pair where it did not is listed, not compiled. Kernels whose sources and arguments are the
same but for comments (the default build, shared by rules that are on by default) are
compiled once per chip.
--python names an interpreter with jax[tpu]==0.12.0 (libtpu 0.0.50.1), which profiles v7x.
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from compiler_estimates import SHAPES, _fmt, measure_and_report, profile  # noqa: E402

from codegen import masks  # noqa: E402
from codegen.build import build_source  # noqa: E402
from codegen.estimate import CLOCK_HZ, case_from_shapes, shapes_text  # noqa: E402
from codegen.rules import RULES  # noqa: E402
from codegen.tpu_compile import Compiled  # noqa: E402
from codegen.tune import block_keyword  # noqa: E402
from codegen.verify import kernel_to_compile  # noqa: E402


@dataclass(frozen=True)
class Pair:
    """One row per chip: `rule` switched on and off in `spec` at `shapes`."""

    rule: str
    spec: str
    shapes: dict
    case: str = ""  # what the shapes are for, where a rule has several
    blocks: dict = field(default_factory=dict)  # axis -> block, else the chip's default blocks
    edit: tuple = ()  # (old, new) replaced in the spec's text before the rule is switched


# bmm and attention with a tail on the ordered axis (k, skv), and the same without one.
_BMM_BLOCKS = {"m": 256, "n": 256, "k": 256}
_BMM = {"batch": 4, "m": 1024, "n": 1024}
_ATTENTION = {"batch": 2, "head": 8, "sq": 2048, "d": 128}

PAIRS = [
    # invariant_load fires where an input shares no axis with the ordered loop: q in the
    # attention kernels (ordered over skv), bias in matmul_bias_gelu (ordered over k).
    Pair("invariant_load", "attention", SHAPES["attention"]),
    Pair("invariant_load", "causal_attention", SHAPES["causal_attention"]),
    Pair("invariant_load", "gdpa_jagged", SHAPES["gdpa_jagged"]),
    Pair("invariant_load", "matmul_bias_gelu", SHAPES["matmul_bias_gelu"]),
    # gdpa holds K/V whole per segment and has no ordered axis: listed to show it does not fire.
    Pair("invariant_load", "gdpa", SHAPES["gdpa"]),
    Pair("last_block_mask", "bmm", _BMM | {"k": 1000}, "tail: k=1000, block_k=256", _BMM_BLOCKS),
    # At k=1000 (not a multiple of 128) the v7x compile runs out of VMEM, rule on or off, on
    # XLA's temporaries around the call; k=1152 has a 128-row tail in its last block of 256.
    Pair("last_block_mask", "bmm", _BMM | {"k": 1152}, "tail: k=1152, block_k=256", _BMM_BLOCKS),
    Pair("last_block_mask", "bmm", _BMM | {"k": 1024}, "no tail (floor): k=1024", _BMM_BLOCKS),
    Pair("last_block_mask", "attention", _ATTENTION | {"skv": 2000}, "tail: skv=2000, block_skv=128"),
    # libtpu's profiler aborts on this attention on v7x at skv below 2048 (1920, 1984 and 2000
    # alike, whole blocks or not) and profiles it above: a tail there too.
    Pair("last_block_mask", "attention", _ATTENTION | {"skv": 2096}, "tail: skv=2096, block_skv=128"),
    Pair("last_block_mask", "attention", _ATTENTION | {"skv": 2048}, "no tail (floor): skv=2048"),
    Pair("snake_order", "attention", SHAPES["attention"]),
    Pair("snake_order", "causal_attention", SHAPES["causal_attention"]),
    Pair("snake_order", "bmm", SHAPES["bmm"]),
    Pair("mask_skip", "causal_attention", SHAPES["causal_attention"]),
    Pair("output_only", "exp", SHAPES["exp"]),
    # deferred_mask fires on gdpa_jagged's v: its tail mask on skv moves past the transpose.
    Pair("deferred_mask", "gdpa_jagged", SHAPES["gdpa_jagged"]),
    # softmax.yaml holds its rows whole by its axis (n: {max: 4096}); with n tiled, the rule
    # is what holds it whole (on) or walks it in three passes (off).
    Pair("keep_whole", "softmax", SHAPES["softmax"], "n tiled (block_n=512)",
         edit=("n: {max: 4096}", "n: {block: 512, max: 4096}")),
    # real_tiles_only: at full segments (compiler_estimates SHAPES) the grid is the same
    # size on and off, so the row shows what the map lookups cost. grouped_gemm is not
    # measured: libtpu's profile costs its kernel at 0 cycles, on and off, and has only
    # XLA's ops around it to give.
    Pair("real_tiles_only", "gdpa_jagged", SHAPES["gdpa_jagged"]),
    # aligned_tiles fires where a tensor holds a jagged axis in its last two dims: the
    # ordered one the segment sums read (grouped_gemm's parallel rows, written merged, have
    # no estimate: see real_tiles_only above).
    Pair("aligned_tiles", "segment_sum", SHAPES["segment_sum"]),
    Pair("aligned_tiles", "segment_mean", SHAPES["segment_mean"]),
]

# Rules that no pair measures, and why.
NOT_MEASURED = {
    "slot_semaphores": "off, both VMEM slots of a paged operand share one DMA semaphore, so a wait can be "
                       "satisfied by the other slot's prefetch and a block read before it lands: a race, not "
                       "a setting to compare",
    "idle_tiles_hold": "the fetches it saves are on tiles past a segment's end, which only the offsets, read at "
                       "run time, tell apart: the compiler's estimate sees its index arithmetic, not what it saves. "
                       "benchmarks/dma_traffic_results.md measures the traffic instead (gdpa_jagged 1.78x the minimum "
                       "before the rule, 1.00x with it)",
    "paged_prefetch": "it overlaps the next block's page DMAs with the current block's compute, in a "
                      "loop that runs to each sequence's length, read from SMEM at run time; the compiler "
                      "costs such a loop at a fixed guess of its trips (codegen.estimate."
                      "data_dependent_note), so its estimate does not measure the overlap",
}


def with_rule(text: str, rule: str, state: str) -> str:
    """A spec's text with one more rule switch, in its `rules:` mapping if it has one."""
    if re.search(rf"\nrules: {{.*\b{rule}: ", text):  # already switched: switch it again
        return re.sub(rf"(\nrules: {{.*\b{rule}: )[a-z]+", rf"\g<1>{state}", text, count=1)
    if "\nrules: {" in text:
        return text.replace("\nrules: {", f"\nrules: {{{rule}: {state}, ", 1)
    return text + f"rules:\n  {rule}: {state}\n"


@dataclass
class Row:
    pair: Pair
    chip: str
    shapes: str
    fired: bool
    why_not: str = ""  # the rule's decision where it did not fire
    on: Compiled | None = None
    off: Compiled | None = None
    skipped: float | None = None  # mask_skip: the share of its tiles skipped at these shapes


@dataclass
class Run:
    rows: list[Row] = field(default_factory=list)
    versions: set[str] = field(default_factory=set)
    compiled: dict = field(default_factory=dict)  # (chip, source, args, kwargs) -> Compiled
    compiles: int = 0


def main() -> int:
    rules = list(dict.fromkeys(p.rule for p in PAIRS))
    specs = list(dict.fromkeys(p.spec for p in PAIRS))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", nargs="+", default=sorted(CLOCK_HZ), choices=sorted(CLOCK_HZ))
    parser.add_argument("--rules", nargs="+", default=rules, choices=rules)
    parser.add_argument("--specs", nargs="+", default=specs, choices=specs)
    parser.add_argument("--python", default=None, help="interpreter whose jax and libtpu compile, for every chip")
    return measure_and_report(parser.parse_args(), Run(), measure, report)


def build(text: str, chip: str, folder: Path, rule: str, state: str):
    """The spec built for `chip` with `rule` switched: in its text (where a rule needs the
    spec's own word, as snake_order over declared accumulators does) and over the chip's
    tune entry, whose switches would otherwise take the place of the spec's."""
    path = folder / "spec.yaml"
    path.write_text(with_rule(text, rule, state), encoding="utf-8")
    return build_source(path, None, chip, rules={rule: state == "on"})


def measure(args, started, run: Run) -> None:
    pairs = [p for p in PAIRS if p.rule in args.rules and p.spec in args.specs]
    with tempfile.TemporaryDirectory(prefix="rule-effects-") as scratch:
        folder = Path(scratch)
        for pair in pairs:
            text = (ROOT / "specs" / f"{pair.spec}.yaml").read_text(encoding="utf-8")
            if pair.edit:
                old, new = pair.edit
                assert old in text, f"{pair.spec}.yaml no longer has {old!r}"
                text = text.replace(old, new)
            for chip in args.chips:
                built = {state: build(text, chip, folder, pair.rule, state) for state in ("on", "off")}
                decisions = {s: [d for d in b.plan.decisions if d.rule == pair.rule] for s, b in built.items()}
                fired = any(d.applied for d in decisions["on"]) and not any(d.applied for d in decisions["off"])
                case = case_from_shapes(built["on"].plan, pair.shapes, "benchmark")
                row = Row(pair, chip, shapes_text(case), fired, skipped=skipped_share(built["on"].plan, case, pair.blocks))
                run.rows.append(row)
                if not fired:
                    row.why_not = "; ".join(dict.fromkeys(d.reason for d in decisions["on"])) or "no decision"
                    print(f"[{time.perf_counter() - started:6.0f}s] {pair.rule} on {pair.spec} ({chip}): "
                          f"does not fire, not compiled: {row.why_not[:160]}", file=sys.stderr, flush=True)
                    continue
                for state, b in built.items():
                    blocks = {block_keyword(b.plan, a): n for a, n in pair.blocks.items()}
                    kernel = kernel_to_compile(b, case, blocks)
                    # Full-line comments (the spec's hash, the rules' reasons) do not reach the compiler.
                    code = "\n".join(line for line in kernel.source.splitlines() if not line.lstrip().startswith("#"))
                    key = (chip, code, repr(kernel.args), repr(sorted(kernel.kwargs.items())))
                    where = f"{pair.rule} {state}, {pair.spec}{' (' + pair.case + ')' if pair.case else ''} on {chip}"
                    if key in run.compiled:
                        print(f"[{time.perf_counter() - started:6.0f}s] {where}: the same kernel as before",
                              file=sys.stderr, flush=True)
                    else:
                        print(f"[{time.perf_counter() - started:6.0f}s] {where} ...", file=sys.stderr, flush=True)
                        result, two_pass = profile(kernel, chip, args.python)
                        run.compiled[key] = result
                        run.compiles += 1
                        run.versions.add(f"jax {result.jax_version} / libtpu {result.libtpu_version}")
                        print(f"         compiled={result.ok} in {result.seconds:.1f}s, cycles={_fmt(result.estimated_cycles)}"
                              f"{' (two passes)' if two_pass else ''}"
                              f"{' ' + result.profile_error[:120] if result.profile_error else ''}"
                              f"{' ' + result.error[:200] if result.error else ''}", file=sys.stderr, flush=True)
                    setattr(row, state, run.compiled[key])


def skipped_share(plan, case, blocks) -> float | None:
    """The share of the tiles over mask_skip's axes that it skips at `case`'s sizes, if it fired."""
    skip = plan.mask_skip
    if skip is None:
        return None
    block = {a: blocks.get(a, plan.axes[a].block) for a in skip.axes}
    tiles = {a: -(-case.sizes[a] // block[a]) for a in skip.axes}
    env = {term: float(case.sizes[term[1]]) for c in skip.condition.comparisons
           for term, _ in c.expr.terms if term[0] == "extent"}
    return masks.skipped_fraction(skip.condition, tiles, block, env)


def _cycles(r: Compiled | None) -> str:
    if r is None:
        return "-"
    if not r.ok:
        return "compile failed"
    if r.estimated_cycles is None:
        if r.profile_error:
            return "no estimate (profiler aborted)"
        return "no estimate of the kernel (0 cycles)" if r.profile_gap else "no estimate in the profile"
    return _fmt(r.estimated_cycles)


def _ratio(row: Row) -> float | None:
    if row.on and row.off and row.on.estimated_cycles and row.off.estimated_cycles:
        return row.on.estimated_cycles / row.off.estimated_cycles
    return None


def _spills(r: Compiled | None, memory: str) -> int | None:
    """Spill and fill instructions to `memory` (vmem or smem), added."""
    if r is None or getattr(r, f"{memory}_spills") is None:
        return None
    return getattr(r, f"{memory}_spills") + getattr(r, f"{memory}_fills")


def _pair_cell(a, b, fmt=str) -> str:
    return f"{'-' if a is None else fmt(a)} / {'-' if b is None else fmt(b)}"


def _mib(r: Compiled | None):
    return None if r is None or r.scoped_vmem_bytes is None else r.scoped_vmem_bytes / 2**20


def report(args, started, run: Run) -> str:
    out = ["# Rule effects: each planner rule on and off, by the compiler's estimate", ""]
    out.append("Command: `PYTHONPATH=. python benchmarks/rule_effects.py " + " ".join(sys.argv[1:])
               + " > benchmarks/rule_effects_results.md`")
    out.append("")
    out.append("Compiler: " + ("; ".join(sorted(run.versions)) or "none ran") + ". Cycles are libtpu's static "
               "estimate (`--xla_jf_dump_static_llo_profile_to`), summed over the program's ops. Spills: VMEM (or "
               "SMEM) spill + fill instructions in the final bundles, static counts, not executions. Ratio: cycles with the rule on / with it off (below 1: the "
               "rule saves cycles). Each spec is built for the chip, so with its tuned default blocks (the "
               "spec's tune: entry) unless the case names blocks. A rule is said to fire where some decision "
               "of it applied with it on and none with it off (`codegen plan` prints them).")
    out.append("")
    by_rule: dict[str, list[Row]] = {}
    for row in run.rows:
        by_rule.setdefault(row.pair.rule, []).append(row)
    for rule, rows in by_rule.items():
        default = next(r.on_by_default for r in RULES if r.name == rule)
        out.append(f"## {rule} ({'on' if default else 'off'} by default)")
        out.append("")
        out.append("| spec | case | shapes | chip | fired | cycles on | cycles off | on/off | VMEM spills on / off | "
                   "SMEM spills on / off | scoped VMEM MiB on / off |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for row in rows:
            p = row.pair
            case = p.case or "compiler_estimates SHAPES"
            if not row.fired:
                out.append(f"| {p.spec} | {case} | {row.shapes} | {row.chip} | no: {row.why_not} | - | - | - | - | - | - |")
                continue
            ratio = _ratio(row)
            out.append(f"| {p.spec} | {case} | {row.shapes} | {row.chip} | yes | {_cycles(row.on)} | {_cycles(row.off)} | "
                       f"{'-' if ratio is None else f'{ratio:.3f}'} | "
                       f"{_pair_cell(_spills(row.on, 'vmem'), _spills(row.off, 'vmem'))} | "
                       f"{_pair_cell(_spills(row.on, 'smem'), _spills(row.off, 'smem'))} | "
                       f"{_pair_cell(_mib(row.on), _mib(row.off), lambda v: f'{v:.2f}')} |")
        out.append("")
        out += _summary(rule, rows)
    out += _not_measured(args, by_rule)
    failures = [(row, state, r) for row in run.rows for state, r in (("on", row.on), ("off", row.off))
                if r is not None and (not r.ok or r.profile_error or r.estimated_cycles is None)]
    if failures:
        out.append("## Compile and profile failures")
        out.append("")
        for row, state, r in failures:
            why = r.error.splitlines()[0] if not r.ok else (r.profile_error or r.profile_gap or "no estimate in the profile")
            case = f" ({row.pair.case})" if row.pair.case else ""
            out.append(f"- {row.pair.rule} {state}, {row.pair.spec}{case} on {row.chip}: {why[:300]}")
        out.append("")
    out.append(f"{run.compiles} compiles; total time: {time.perf_counter() - started:.0f}s on this machine "
               "(2 cores, shared).")
    return "\n".join(out)


def _span(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:.3f}" if f"{low:.3f}" == f"{high:.3f}" else f"{low:.3f}-{high:.3f}"


def _summary(rule: str, rows: list[Row]) -> list[str]:
    """Per case of the rule: spills added over its rows on and off, and the range of its ratios."""
    out = []
    groups: dict[str, list[Row]] = {}
    for row in rows:
        if row.fired:
            groups.setdefault(row.pair.case or "at compiler_estimates SHAPES", []).append(row)
    for case, group in groups.items():
        measured = [r for r in group if _ratio(r) is not None]
        if not measured:
            out.append(f"- {rule}, {case}: no row has both estimates.")
            continue
        ratios = [_ratio(r) for r in measured]
        totals = {}
        for memory in ("vmem", "smem"):
            for state in ("on", "off"):
                totals[memory, state] = sum(_spills(getattr(r, state), memory) or 0 for r in measured)
        fewer = sum(1 for x in ratios if x < 1)
        more = sum(1 for x in ratios if x > 1)
        chips = {}
        for r in measured:
            chips.setdefault(r.chip, []).append(_ratio(r))
        per_chip = ", ".join(f"{chip} {_span(v)}" for chip, v in chips.items())
        out.append(
            f"- {rule}, {case}, {len(measured)} row{'s' if len(measured) > 1 else ''}: VMEM spills+fills on {totals['vmem', 'on']:,} vs off "
            f"{totals['vmem', 'off']:,}; SMEM on {totals['smem', 'on']:,} vs off {totals['smem', 'off']:,}; "
            f"cycles on/off {_span(ratios)} (median {statistics.median(ratios):.3f}; by chip: "
            f"{per_chip}); fewer cycles with the rule on in {fewer}, more in {more}, the same in "
            f"{len(ratios) - fewer - more}."
        )
    same = [f"{r.pair.spec} on {r.chip}" for r in group_rows(rows)
            if all(getattr(r.on, a) == getattr(r.off, a) for a in _SAME)]
    if same:
        out.append(f"- {rule}: on and off gave the same cycles, spills and fills and scoped VMEM in "
                   f"{len(same)} row{'s' if len(same) > 1 else ''} ({', '.join(same)}): the compiler made "
                   "the same program of both, or programs it costs alike.")
    if rule == "mask_skip":
        for spec, share in dict.fromkeys((r.pair.spec, r.skipped) for r in rows if r.skipped is not None):
            out.append(f"- {rule} skips {share:.1%} of {spec}'s tiles at these shapes, so {1 - share:.1%} of the "
                       "work on them remains: the ratio the skip alone would give.")
        for r in rows:
            if r.skipped is not None and _ratio(r) is not None and _ratio(r) < 1 - r.skipped:
                out.append(f"- {rule}, {r.pair.spec} on {r.chip}: cycles on/off {_ratio(r):.3f}, below the "
                           f"{1 - r.skipped:.3f} of the work left: the estimate fell by more than the skipped "
                           "work accounts for.")
    unfired = sorted({r.pair.spec for r in rows if not r.fired})
    if unfired:
        out.append(f"- {rule} does not fire on {', '.join(unfired)}: not compiled.")
    out.append("")
    return out


_SAME = ("estimated_cycles", "vmem_spills", "vmem_fills", "smem_spills", "smem_fills", "scoped_vmem_bytes")


def group_rows(rows: list[Row]) -> list[Row]:
    """The rows with both estimates (the tail cases' floors, whose programs are alike by design, aside)."""
    return [r for r in rows if _ratio(r) is not None and "floor" not in r.pair.case]


def _not_measured(args, by_rule) -> list[str]:
    missing = [r.name for r in RULES if r.name not in by_rule]
    if not missing:
        return []
    out = ["## Rules not measured", ""]
    for name in missing:
        if name in NOT_MEASURED:
            out.append(f"- {name}: {NOT_MEASURED[name]}.")
        else:
            out.append(f"- {name}: not among this run's --rules/--specs.")
    out.append("")
    return out


if __name__ == "__main__":
    sys.exit(main())
