"""The planner's optimization rules, each a named unit that can be switched off.

A rule looks at the draft plan, changes it where it applies, and says what it
did (or why it did nothing) in a `Decision` that `codegen plan` prints. A spec
turns a rule off with `rules: {NAME: off}`, so its effect can be compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from codegen import ir

if TYPE_CHECKING:  # pragma: no cover
    from codegen.plan import Plan


@dataclass(frozen=True)
class Decision:
    rule: str
    subject: str
    applied: bool
    reason: str


class Rule:
    name: str = ""
    seed: str = ""
    summary: str = ""
    # The generated code it shapes, where its reason is written as a comment:
    # "block_spec" (an operand's BlockSpec), "mask" (a tail mask), "scratch" (scratch entries).
    shapes: str = ""
    # Whether a spec that does not name the rule gets it. Off where the compiler's estimate
    # measured it slower than without (see benchmarks/rule_effects_results.md).
    on_by_default: bool = True
    # Why `codegen tune` never tries the rule off, where it must not: off is a correctness
    # bug, or the estimate it scores by cannot see what the rule saves. Empty: it may.
    tune_keeps_on: str = ""

    def kept_on_by_tune(self, plan: "Plan") -> str:
        """Why tuning must not try the rule off for this plan ("": it may)."""
        return self.tune_keeps_on

    def apply(self, plan: "Plan", enabled: bool) -> list[Decision]:
        raise NotImplementedError


class OutputOnly(Rule):
    shapes = "block_spec"
    name = "output_only"
    seed = "seed 002 (Helion #1849)"
    summary = "a tensor written but never read is not a pallas_call input"

    def apply(self, plan, enabled):
        decisions = []
        for t in plan.ir.outputs:
            if t.read:
                decisions.append(Decision(self.name, t.name, False, f"'{t.name}' is read and written: it stays an input, aliased to its output"))
                continue
            if enabled:
                decisions.append(Decision(self.name, t.name, True, f"'{t.name}' is written but never read: output only (out_shape), no input, no alias"))
            else:
                plan.donate_output(t.name)
                decisions.append(Decision(self.name, t.name, False, f"rule off: '{t.name}' is allocated, passed as an input in HBM and aliased to its output"))
        return decisions


class InvariantLoad(Rule):
    shapes = "block_spec"
    name = "invariant_load"
    seed = "seed 000 (Helion #2397)"
    summary = "an input that does not vary over the ordered loop is read in-loop from its resident block, not pipelined"

    def apply(self, plan, enabled):
        ordered = plan.ir.ordered_axis
        decisions = []
        for op in plan.inputs:
            if op.memory != "blocked":
                continue
            if ordered is None:
                decisions.append(Decision(self.name, op.tensor, False, "no ordered axis: every grid step may need a new block"))
                continue
            if plan.axes[ordered].mode == "paged":
                decisions.append(Decision(
                    self.name, op.tensor, False,
                    f"'{ordered}' is walked inside each grid step, where '{op.tensor}' is already read from its block; "
                    "its second buffer overlaps the next grid step's fetch, so it stays",
                ))
                continue
            dims = plan.ir.tensors[op.tensor].dims
            if ordered in dims:
                decisions.append(Decision(self.name, op.tensor, False, f"'{op.tensor}' varies over ordered axis '{ordered}': pipelined, double-buffered"))
                continue
            if enabled:
                op.buffers = 1
                decisions.append(Decision(
                    self.name, op.tensor, True,
                    f"'{op.tensor}' [{', '.join(dims)}] shares no axis with the '{ordered}' loop: one resident buffer, "
                    f"read in-loop, no prefetch across '{ordered}' steps",
                ))
            else:
                decisions.append(Decision(self.name, op.tensor, False, f"rule off: '{op.tensor}' is double-buffered although its block is the same on every '{ordered}' step"))
        return decisions


RULES: tuple[Rule, ...] = (OutputOnly(), InvariantLoad())
RULE_NAMES = tuple(r.name for r in RULES)


class DeferredMask(Rule):
    shapes = "mask"
    name = "deferred_mask"
    seed = "seed 001 (Helion #2812)"
    summary = (
        "a load's tail mask on a major dim is applied after the transpose that moves that dim "
        "into the last two, where the consuming reduction masks anyway"
    )

    def apply(self, plan, enabled):
        from codegen.plan import permuted_masked_loads

        decisions = []
        for load in permuted_masked_loads(plan):
            rank = len(load.layout)
            at_load, after = load.position, load.permutation.index(load.position)
            where = f"'{load.tensor}' is masked along '{load.axis}' for {load.consumer}"
            if at_load < rank - 2 and after >= rank - 2:
                if enabled:
                    decisions.append(Decision(
                        self.name, load.tensor, True,
                        f"{where}: the mask moves from major dim {at_load} at the load to dim {after} after "
                        f"jnp.transpose{load.permutation}, a sublane/lane dim where masking is cheap",
                    ))
                    continue
                plan.mask_at_load[load.tensor] = (load.axis, load.fill)
                decisions.append(Decision(self.name, load.tensor, False, f"rule off: {where}; masked at the load, on major dim {at_load}"))
            else:
                plan.mask_at_load[load.tensor] = (load.axis, load.fill)
                decisions.append(Decision(
                    self.name, load.tensor, False,
                    f"{where}: the transpose moves it from dim {at_load} to dim {after}, not from a major dim "
                    "into the last two; masked at the load",
                ))
        if not decisions:
            decisions.append(Decision(self.name, "-", False, "no load is masked and then transposed before its reduction"))
        return decisions


RULES = (*RULES, DeferredMask())
RULE_NAMES = tuple(r.name for r in RULES)


class PagedPrefetch(Rule):
    shapes = "scratch"
    name = "paged_prefetch"
    seed = "seed 003 (hw-native-sys #704)"
    summary = "the next block of pages is DMA'd into the other VMEM slot before the current block is computed on"
    tune_keeps_on = (
        "it overlaps page DMAs with compute in a loop that runs to each sequence's length, which the "
        "compiler's estimate prices at a fixed guess of its trips: the estimate cannot see the overlap"
    )

    def apply(self, plan, enabled):
        paged = [op.tensor for op in plan.inputs if op.memory == "paged"]
        if not paged:
            return [Decision(self.name, "-", False, "no paged operand")]
        names = ", ".join(paged)
        if enabled:
            return [Decision(
                self.name, names, True,
                "two VMEM slots; while one block is computed on, the next one's pages (of this head, the next "
                "head or the next non-empty sequence) are in flight into the other slot",
            )]
        plan.paged_slots, plan.paged_prefetch = 1, False
        return [Decision(self.name, names, False, "rule off: one slot; each block is fetched, waited for, then computed on")]


class SlotSemaphores(Rule):
    shapes = "scratch"
    name = "slot_semaphores"
    seed = "seed 003's follow-up race fix"
    summary = "each VMEM slot of a paged operand has its own DMA semaphore"
    tune_keeps_on = "off is the race the rule exists to prevent"

    def apply(self, plan, enabled):
        paged = [op.tensor for op in plan.inputs if op.memory == "paged"]
        if not paged or not plan.paged_prefetch:
            return [Decision(self.name, "-", False, "no double-buffered paged operand")]
        names = ", ".join(paged)
        if enabled:
            return [Decision(self.name, names, True, "a wait on a slot's semaphore is satisfied only by that slot's DMAs")]
        plan.semaphore_per_slot = False
        return [Decision(
            self.name, names, False,
            "rule off: both slots share one semaphore, so a wait for this slot can be satisfied by the "
            "prefetch into the other one and the block is read before it lands (the race seed 003's project hit)",
        )]


RULES = (*RULES, PagedPrefetch(), SlotSemaphores())
RULE_NAMES = tuple(r.name for r in RULES)


class MaskSkip(Rule):
    name = "mask_skip"
    seed = "JAX's flash_attention, causal=True"
    summary = (
        "a where() mask that is false for a whole tile of the ordered axis skips the tile's compute, "
        "and its blocks are not fetched (index maps clamp to the live blocks, or a loop stops at the last)"
    )
    shapes = "block_spec"

    def kept_on_by_tune(self, plan):
        if plan.unit.loop_trips_unseen_by_estimate:
            return (
                f"the {plan.lowering} lowering walks '{plan.ir.ordered_axis}' in a loop that the compiler's estimate "
                "prices at a fixed guess of its trips: the estimate cannot see the blocks it skips"
            )
        return ""

    def apply(self, plan, enabled):
        from codegen import masks

        k, ordered = plan.ir, plan.ir.ordered_axis
        sites = masks.find_sites(k)
        if not sites:
            return [Decision(self.name, "-", False, "no where() in the work done on each step of an ordered axis")]
        if not plan.unit.skips_masked_tiles:
            return [Decision(self.name, sites[0][0].name, False, f"the {plan.lowering} lowering walks '{ordered}' in its own loop")]
        if k.passes > 1:
            return [Decision(self.name, sites[0][0].name, False, f"'{ordered}' is walked in passes, whose index maps it would clamp")]
        values = {st.name: st.value for st in k.statements if st.target == "value"}
        decisions, candidates = [], []
        for st, where in sites:
            cond = masks.condition(where.args[0], k, values)
            fill = masks.fill_value(where.args[2])
            if cond is None:
                reason = "its condition is not a comparison of affine expressions in index(), extent(), numbers and scalars"
            elif not any(c.expr.coefficient(("index", ordered)) for c in cond.comparisons):
                reason = f"its condition does not depend on index({ordered})"
            elif fill not in (0.0, float("-inf")):
                reason = "its else-branch is neither 0 nor -inf, so a masked tile may still contribute"
            elif not _every_update_reads(k, where, values):
                reason = f"some work on each '{ordered}' step does not go through the mask, so a masked tile still contributes"
            else:
                candidates.append((st, cond, fill))
                continue
            decisions.append(Decision(self.name, st.name, False, f"where() in '{st.name}': {reason}"))
        if len(candidates) > 1:
            return decisions + [Decision(self.name, c[0].name, False, "several masks: a tile is skipped only under one") for c in candidates]
        for st, cond, fill in candidates:
            axes = list(dict.fromkeys(name for c in cond.comparisons for (kind, name), _ in c.expr.terms if kind == "index"))
            fraction = _nominal_fraction(plan, cond, axes)
            shown = masks.format_condition(cond)
            if not enabled:
                decisions.append(Decision(self.name, st.name, False, f"rule off: tiles where {shown} never holds are computed and fetched"))
                continue
            plan.mask_skip = masks.SkipPlan(st.name, cond, ordered, fill, fraction, axes)
            decisions.append(Decision(
                self.name, st.name, True,
                f"where({shown}, ..., {fill}) in '{st.name}': a '{ordered}' tile where it never holds adds nothing, so it "
                f"skips its compute and its blocks are not fetched; {fraction:.0%} of the "
                f"({', '.join(axes)}) tiles at {masks.NOMINAL_TILES} tiles per axis",
            ))
        return decisions


def _every_update_reads(k, where, values) -> bool:
    """Whether every accumulator update on each step reads the masked value."""
    from codegen import ir

    memo: dict[str, bool] = {}

    def reaches(v) -> bool:
        if v is where:
            return True
        if isinstance(v, ir.ValueRef) and v.name in values:
            if v.name not in memo:
                memo[v.name] = False
                memo[v.name] = reaches(values[v.name])
            return memo[v.name]
        return any(reaches(c) for c in ir.children(v))

    return all(reaches(st.value) for st in k.statements if st.phase == "step" and st.target == "accumulator")


def _nominal_fraction(plan, cond, axes) -> float:
    from codegen import masks

    tiles, blocks, env = {}, {}, {}
    for a in axes:
        ap = plan.axes[a]
        if ap.mode == "paged":  # positions, not pages
            blocks[a] = ap.block * plan.ir.axes[a].paged.page_size
        else:
            blocks[a] = ap.block if ap.blocked else 1 if ap.mode in ("squeezed", "segment") else (plan.ir.axes[a].max or 128)
        tiles[a] = masks.NOMINAL_TILES if ap.mode != "full" else 1
    for c in cond.comparisons:
        for (kind, name), _ in c.expr.terms:
            if kind == "extent":
                env[(kind, name)] = masks.NOMINAL_TILES * blocks.get(name, 1)
            elif kind == "scalar":
                axis = next(a for a in plan.ir.axes.values() if a.jagged and a.jagged.max == name)
                env[(kind, name)] = masks.NOMINAL_TILES * plan.axes[axis.name].block
            elif kind == "param":
                env[(kind, name)] = float(plan.ir.params[name])
    return masks.skipped_fraction(cond, tiles, blocks, env)


RULES = (*RULES, MaskSkip())
RULE_NAMES = tuple(r.name for r in RULES)


class KeepWhole(Rule):
    name = "keep_whole"
    seed = "JAX's Pallas softmax and layer_norm ops, which hold whole rows in a block"
    summary = (
        "a tiled axis that a reduction over it is used against (e / sum(e, over=n)) is held whole "
        "in each block when it fits in VMEM; otherwise, or with the rule off, it is walked in passes"
    )
    shapes = "block_spec"

    def apply(self, plan, enabled):
        # The IR decides (it builds the passes' accumulators, `ir.keeps_whole`); this reports it.
        from codegen import ir

        k = plan.ir
        decisions = [
            Decision(self.name, a, True, f"a reduction over '{a}' is used elementwise against it: the whole axis sits in each block, one pass")
            for a in sorted(k.whole_axes)
        ]
        if k.passes > 1:
            a = k.ordered_axis
            size = ir.whole_axis_bytes(k.spec, a)
            why = "rule off" if not enabled else (
                f"'{a}' held whole needs {size / 2**20:.0f} MiB of VMEM, over {ir.WHOLE_AXIS_BUDGET // 2**20} MiB"
            )
            decisions.append(Decision(
                self.name, a, False,
                f"{why}: '{a}' is walked {k.passes} times in its tiles, a pass per level of reductions "
                "that read the previous one's results, then one to write",
            ))
        if not decisions:
            decisions.append(Decision(self.name, "-", False, "no reduction is used against its own tiled axis"))
        return decisions


RULES = (*RULES, KeepWhole())
RULE_NAMES = tuple(r.name for r in RULES)


class SnakeOrder(Rule):
    name = "snake_order"
    seed = "the boundary block of consecutive tiles, as in a boustrophedon walk"
    summary = (
        "the ordered axis is walked backwards on every even tile of the grid axis outside it, so "
        "a tile starts on the block the one before ended on, and the pipeline fetches it once"
    )
    shapes = "block_spec"

    def apply(self, plan, enabled):
        k, ordered = plan.ir, plan.ir.ordered_axis
        if ordered is None:
            return [Decision(self.name, "-", False, "no ordered axis")]
        if not plan.unit.walks_in_snake_order:
            return [Decision(self.name, ordered, False, f"the {plan.lowering} lowering walks '{ordered}' inside its own pipeline")]
        if k.passes > 1:
            return [Decision(self.name, ordered, False, f"'{ordered}' is walked in passes, whose steps say which pass it is")]
        position = plan.grid.index(ordered)
        if position == 0:
            return [Decision(self.name, ordered, False, f"no grid axis outside '{ordered}'")]
        outer = plan.grid[position - 1]
        declared = [a.name for a in k.accumulators.values() if a.synthesized_from is None]
        if declared and self.name not in k.spec.authored_rules:
            return [Decision(
                self.name, ordered, False,
                f"declared accumulators ({', '.join(declared)}) may depend on the order of '{ordered}': "
                f"a spec whose updates do not (online softmax) says rules: {{{self.name}: on}}",
            )]
        if not enabled:
            return [Decision(self.name, ordered, False, f"rule off: every '{outer}' tile walks '{ordered}' from its first block")]
        plan.snake_outer = outer
        if plan.mask_skip is not None and plan.mask_skip.axis == ordered and outer in plan.mask_skip.axes:
            why_start = (f"; where mask_skip leaves '{ordered}' blocks 0..last live, last moving with '{outer}', "
                         "a backward walk starts on last - 1, where the forward walk before it ended")
        else:
            why_start = ""
        why = "the spec says its accumulators' updates do not depend on the order" if declared else "sums, maxima and dots do not depend on the order"
        return [Decision(
            self.name, ordered, True,
            f"even '{outer}' tiles walk '{ordered}' from its last block back, so the odd tile after one starts on "
            f"the block it ended on, which the pipeline then fetches once{why_start} ({why})",
        )]


RULES = (*RULES, SnakeOrder())
RULE_NAMES = tuple(r.name for r in RULES)


class IdleTilesHold(Rule):
    name = "idle_tiles_hold"
    seed = "megablox gmm, whose grid visits a group's real tiles only"
    summary = (
        "a tile past its segment's end (the static grid launches cdiv(max, block) per segment, "
        "or real_tiles_only's visits past the last real tile) "
        "holds the ordered axis at its last block, where the tile before it ended, so it "
        "fetches nothing: over-launched tiles never re-read what the ordered axis walks"
    )
    shapes = "block_spec"
    tune_keeps_on = (
        "the fetches it saves are on tiles past a segment's end, which only the offsets, read at run "
        "time, tell apart: the compiler's estimate sees its index arithmetic and not what it saves"
    )

    def apply(self, plan, enabled):
        k, ordered = plan.ir, plan.ir.ordered_axis
        idle = plan.idle_tile_axes
        if not plan.unit.launches_idle_tiles or not idle:
            return [Decision(self.name, "-", False, "no tile is launched past its segment's end")]
        if ordered is None:
            return [Decision(self.name, ", ".join(idle), False, "no ordered axis: an idle tile's blocks already repeat the real one's")]
        if k.passes > 1:
            return [Decision(self.name, ordered, False, f"'{ordered}' is walked in passes, whose steps say which pass it is")]
        walked = [op.tensor for op in plan.inputs if op.memory == "blocked" and ordered in k.tensors[op.tensor].dims]
        if not walked:
            return [Decision(self.name, ordered, False, f"no input is walked along '{ordered}'")]
        if not enabled:
            return [Decision(self.name, ordered, False, f"rule off: a tile past its segment's end walks '{ordered}' and fetches {', '.join(walked)} again")]
        plan.holds_idle_tiles = True
        return [Decision(
            self.name, ordered, True,
            f"a '{'/'.join(idle)}' tile past its segment's end holds '{ordered}' at its last block, where the "
            f"tile before it ended, so its steps fetch no block of {', '.join(walked)}",
        )]


RULES = (*RULES, IdleTilesHold())
RULE_NAMES = tuple(r.name for r in RULES)


class RealTilesOnly(Rule):
    name = "real_tiles_only"
    seed = "megablox gmm, whose grid walks a tile -> group map that it scalar-prefetches"
    summary = (
        "the segments and the tiles of a jagged parallel axis fold into one pipeline axis over "
        "the segments' real tiles, each visit's segment and tile read from a scalar-prefetched "
        "map, so no grid step is launched past a segment's end or for an empty segment"
    )
    shapes = "grid"
    tune_keeps_on = (
        "the compiler's estimate prices the pipeline's loop at a fixed guess of its trips, so it "
        "sees the map lookups each step costs and never the steps the rule saves"
    )

    def apply(self, plan, enabled):
        k = plan.ir
        jagged = plan.jagged_parallel_axes
        if not plan.unit.launches_idle_tiles or not jagged:
            return [Decision(self.name, "-", False, "no jagged parallel axis in a pipeline grid")]
        if len(jagged) > 1:
            return [Decision(self.name, ", ".join(jagged), False, "several jagged parallel axes: one map cannot visit them all")]
        axis = jagged[0]
        segment = k.axes[axis].jagged.segment
        if not plan.unit.visits_real_tiles or segment not in plan.pipeline_grid:
            return [Decision(self.name, axis, False, f"the {plan.lowering} lowering puts the segments of '{axis}' on the pallas_call grid, one pipeline each")]
        per_segment = [t.name for t in k.outputs if segment in t.dims and axis not in t.dims]
        if per_segment:
            return [Decision(
                self.name, axis, False,
                f"{', '.join(per_segment)} has a value per segment, which an empty segment, never visited, would not write",
            )]
        if not enabled:
            return [Decision(self.name, axis, False, f"rule off: every segment launches cdiv(max, block_{axis}) tiles of '{axis}'; those past its end do nothing")]
        plan.visited_tiles = (segment, axis)
        return [Decision(
            self.name, axis, True,
            f"'{segment}' and '{axis}' tiles fold into one axis over the real tiles; each visit's segment "
            "and tile come from scalar-prefetched maps, and the few visits past the last real tile do nothing",
        )]


RULES = (*RULES, RealTilesOnly())
RULE_NAMES = tuple(r.name for r in RULES)


class AlignedTiles(Rule):
    name = "aligned_tiles"
    seed = "megablox gmm, whose row tiles are aligned to the array and shared by the groups they overlap"
    summary = (
        "a jagged axis is walked in blocks aligned to the array, each segment visiting the blocks "
        "its rows overlap and masking the rows outside it, so a tensor with the axis in its last "
        "two dims keeps its dense (8, 128) tiles instead of being passed with its rows as a major "
        "dim, which moves them one row at a time; an output's block that two segments share is "
        "visited by both in a row and written back once, each writing only its own rows"
    )
    shapes = "block_spec"

    def apply(self, plan, enabled):
        jagged = [a for a in plan.pipeline_grid if plan.axes[a].mode == "jagged"]
        if not jagged:
            return [Decision(self.name, "-", False, "no jagged axis in a pipeline grid")]
        return [self.decide(plan, axis, enabled) for axis in jagged]

    def decide(self, plan, axis, enabled) -> Decision:
        k = plan.ir
        if not plan.unit.aligns_jagged_tiles:
            return Decision(
                self.name, axis, False,
                f"the {plan.lowering} lowering runs a pipeline per segment, which would fetch a block that two "
                "segments share once for each",
            )
        ordered = axis == k.ordered_axis
        written = [t.name for t in k.outputs if axis in t.dims]
        if ordered and written:
            return Decision(
                self.name, axis, False,
                f"{', '.join(written)} is written along '{axis}', the ordered axis: a block shared by two "
                "segments would be written back after each, and the second write would undo the first",
            )
        if not ordered:
            reduced = sorted({v.kind if isinstance(v, ir.Reduce) else "dot" for st in k.statements
                              for v in ir.walk(st.value) if isinstance(v, (ir.Reduce, ir.Dot)) and v.axis == axis})
            if reduced:
                return Decision(
                    self.name, axis, False,
                    f"{', '.join(reduced)} over '{axis}' needs each segment's rows in blocks of their own",
                )
            # One segment's last block and the next one's first must be visited in a row: no
            # axis an output varies over may be walked between them.
            grid, segment = plan.pipeline_grid, k.axes[axis].jagged.segment
            folded = plan.visited_tiles == (segment, axis)
            between = grid[grid.index(axis if folded or segment not in grid else segment) + 1:]
            moved = {d for t in k.outputs if axis in t.dims for d in t.dims if d in between and d != axis}
            if moved:
                return Decision(
                    self.name, axis, False,
                    f"outputs vary over {', '.join(sorted(moved))}, walked between one '{segment}' and the next, "
                    f"so two segments' visits to a shared '{axis}' block would not follow each other",
                )
        if k.passes > 1 or (plan.mask_skip and axis in (plan.mask_skip.axis, *plan.mask_skip.axes)) or plan.snake_outer == axis:
            why = (f"'{k.ordered_axis}' is walked in passes" if k.passes > 1 else
                   "mask_skip bounds blocks by positions within a segment" if plan.snake_outer != axis else
                   f"snake_order walks its ordered axis backwards on alternate '{axis}' tiles")
            return Decision(self.name, axis, False, f"{why}: '{axis}' blocks stay aligned to each segment")
        operands = [(op, "in") for op in plan.inputs if op.memory == "blocked"] + [(op, "out") for op in plan.outputs]
        rows = [op.tensor for op, _ in operands
                if len(k.tensors[op.tensor].dims) >= 2 and k.tensors[op.tensor].dims[-2] == axis]
        if not rows:
            return Decision(self.name, axis, False, f"no tensor holds '{axis}' in its last two dims: its blocks are dense either way")
        if not enabled:
            return Decision(
                self.name, axis, False,
                f"rule off: '{axis}' blocks start at each segment's first row, so {', '.join(rows)} "
                f"{'is' if len(rows) == 1 else 'are'} passed with {'its' if len(rows) == 1 else 'their'} "
                f"'{axis}' rows as a major dim",
            )
        plan.aligned_tiles.add(axis)
        j, ap = k.axes[axis].jagged, plan.axes[axis]
        ap.reason = ap.reason.replace(f"cdiv({j.max}, block) tiles per segment", f"cdiv({j.max} + block - 1, block) "
                                      "blocks aligned to the array per segment")
        if written:  # two segments' visits to a shared block must not run apart
            ap.semantics = "arbitrary"
            ap.reason += "; segments that share a block write it in turn, 'arbitrary'"
        if written:
            masked = (f"writing only its own rows of {', '.join(written)}: a block two segments share is visited "
                      "by both in a row and written back once")
        else:
            masked = "masked to its rows on both sides"
        return Decision(
            self.name, axis, True,
            f"'{axis}' blocks are aligned to the array: a segment visits the blocks its rows overlap, {masked}; "
            f"{', '.join(rows)} {'keeps its' if len(rows) == 1 else 'keep their'} dense tiles, not one row per DMA",
        )


RULES = (*RULES, AlignedTiles())
RULE_NAMES = tuple(r.name for r in RULES)


class LastBlockMask(Rule):
    name = "last_block_mask"
    seed = "JAX's Pallas kernels, which mask a block only where it overhangs the array"
    summary = (
        "a tail mask on the ordered axis is computed only on the block that overhangs the axis's end "
        "(lax.cond on the block's start); every other block goes to its reduction as it is; "
        "off unless a spec or its tune entry turns it on"
    )
    shapes = "mask"
    # The compiler's estimate charges the branch more than the masks it saves on the other
    # blocks (bmm, attention: benchmarks/rule_effects_results.md), so `tune` decides.
    on_by_default = False

    def apply(self, plan, enabled):
        ordered = plan.ir.ordered_axis
        if ordered is None or ordered not in plan.ragged_axes:
            return [Decision(self.name, "-", False, "no ordered axis walked in blocks")]
        if ordered in plan.aligned_tiles:
            return [Decision(self.name, ordered, False, f"'{ordered}' blocks are aligned to the array: a segment's first block can overhang it too")]
        if not enabled:
            return [Decision(self.name, ordered, False, f"rule off: every '{ordered}' block computes its tail mask, which is all-true on all but the last")]
        plan.last_block_masks.add(ordered)
        return [Decision(
            self.name, ordered, True,
            f"only the last '{ordered}' block can overhang its extent, so the tail masks run under "
            "lax.cond on that block alone; the others skip the iota, compare and select",
        )]


RULES = (*RULES, LastBlockMask())
RULE_NAMES = tuple(r.name for r in RULES)
