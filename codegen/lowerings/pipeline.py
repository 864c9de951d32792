"""Jagged kernels: `pltpu.emit_pipeline` over segments and their tiles.

Two units share the kernel body. `outer_pipeline` folds segments and tiles
into one pipeline (seed 004), so DMAs overlap across segment boundaries;
`grid` runs one pipeline per segment on the pallas_call grid, which drains
and refills at every segment.
"""

from __future__ import annotations

from codegen.lowerings.base import Lowering, call_tail, empty_totals, one_or_list, scratch_lines, spec_lines
from codegen.printer import (
    IndexMaps,
    KernelPrinter,
    KernelSource,
    RefGroup,
    Section,
    block_spec,
    def_block,
    grid_parameter,
    indent,
    masked_tile_clamp,
    tile_count,
    tuple_text,
)


def pipeline_order(grid: list[str], axes) -> list[str]:
    """Segments first, then dense parallel axes, then jagged parallel axes, then the ordered
    axis. A tile past its segment's end repeats the block of the segment's last tile; with the
    jagged axis inside every other parallel axis, that repeat follows the real tile directly, so
    the pipeline never writes back an output block that the skipped step left stale."""
    rank = {"segment": 0, "squeezed": 1, "tiled": 1, "jagged": 2}

    def key(a: str) -> int:
        return 3 if axes[a].semantics == "arbitrary" else rank[axes[a].mode]

    return sorted(grid, key=key)


class _Pipeline(Lowering):
    choosable = True
    asks_tpu_info = True
    clamps_tails = True
    walks_in_passes = True
    launches_idle_tiles = True
    loop_trips_unseen_by_estimate = True

    def applies(self, k, axes):
        return any(a.mode == "jagged" for a in axes.values()) and not any(a.mode == "paged" for a in axes.values())

    def block_grid(self, plan):
        return plan.pipeline_grid

    def finish(self, plan):
        # Mosaic slices a tensor's last two dims only at offsets aligned to its (8, 128) tiles,
        # and a segment's rows start anywhere: a tensor whose rows are its second-to-last dim
        # is passed as [..., rows, 1, last], which makes the rows a major dim.
        # So is one read a row at a time, at a segment's index, in blocks of a bounded last
        # dim: libtpu 0.0.42 aborts on such a block, a row of dynamic length
        # (lower_pass_base.cc: `Check failed: dynamic_dim_it`). Not where the row would need
        # masks of two kinds: they apply only before the unit dim merges away.
        ragged, read = plan.ragged_axes, {op.tensor for op in plan.inputs}
        for t in plan.ir.tensors.values():
            if t.scalar or len(t.dims) < 2:
                continue
            row, last = plan.axes[t.dims[-2]].mode, plan.axes[t.dims[-1]].mode
            masked = [d for d in t.dims if d in ragged and plan.axes[d].mode != "jagged"]
            one_mask = t.name not in read or not masked or len(_fills(plan.ir, t.name, masked[0])) <= 1
            if t.dims[-2] in plan.aligned_tiles:  # aligned blocks slice its rows at tile boundaries
                continue
            if row == "jagged" or (row == "segment" and last == "tiled" and one_mask):
                plan.unit_major.append(t.name)
        # A bounded block's last DMA reaches its tile's edge; a TPU's tiled HBM layout holds
        # that padding, interpret mode's arrays do not: outputs get it there (the entry point
        # allocates them to whole tiles and slices them back).
        from codegen.chips import LANES, sublane_tile

        for op in plan.outputs:
            t = plan.ir.tensors[op.tensor]
            dims = plan.kernel_dims(op.tensor)
            padded = []
            for position in (len(dims) - 2, len(dims) - 1):
                if position < 0 or dims[position] == "1":
                    continue
                if plan.axes[dims[position]].mode == "tiled" or dims[position] in plan.aligned_tiles:
                    padded.append((position, LANES if position == len(dims) - 1 else sublane_tile(t.dtype)))
            if padded:
                plan.tile_padded_outputs[op.tensor] = padded
        # An aligned block's rows are sliced from the array itself, and the last block's DMA
        # reaches its tile's edge too (jax 0.12's interpreter reads it whole).
        # A rank-1 tensor's rows are its lanes: its tile edge is a multiple of 128.
        for op in plan.inputs:
            t = plan.ir.tensors[op.tensor]
            if op.memory != "blocked" or t.scalar:
                continue
            if len(t.dims) >= 2 and t.dims[-2] in plan.aligned_tiles:
                plan.tile_padded_inputs[op.tensor] = [(len(t.dims) - 2, sublane_tile(t.dtype))]
            elif len(t.dims) == 1 and t.dims[0] in plan.aligned_tiles:
                plan.tile_padded_inputs[op.tensor] = [(0, LANES)]
        # Such an input is masked as it is read, in its own shape: Mosaic cannot select on the
        # block once the unit dim is merged away.
        for op in plan.inputs:
            dims = plan.ir.tensors[op.tensor].dims
            masked = [d for d in dims if d in ragged and plan.axes[d].mode != "jagged"]
            if op.tensor in plan.unit_major and masked and op.tensor not in plan.mask_at_load:
                fills = _fills(plan.ir, op.tensor, masked[0])
                if len(fills) == 1:  # every reduction reading it wants the same identity
                    plan.mask_at_load[op.tensor] = (masked[0], fills.pop())

    # -- the kernel
    def kernel(self, plan):
        k, ordered = plan.ir, plan.ir.ordered_axis
        p = KernelPrinter(plan)
        lines = [f"{a}_index = pl.program_id({plan.grid.index(a)})" for a in plan.grid]
        body = []
        logical = [grid_parameter(plan, a) for a in plan.pipeline_grid]
        names = [grid_parameter(plan, a) if a in plan.axes else a for a in plan.printed_pipeline_grid]
        body.append(f"{', '.join(names)}{',' if len(names) == 1 else ''} = _grid_indices(pipeline_step)")
        p.uses.add("grid_indices")
        visit = _visit_lines(plan)
        if visit:
            loads = ", ".join(line.split(" = ")[1] for line in visit.values())
            body += [f"# {w}" for w in plan.why(plan.visited_tiles[1], "grid")] + [f"{', '.join(visit)} = {loads}"]

        # Tiles past a segment's end are launched (the grid is static) but skip their work;
        # not an empty segment's first tile where an output has a value per segment: it writes
        # that value (a reduction's identity through the statement), or its block would go
        # back to HBM as the buffer left it.
        parallel_checks, idle_checks, per_segment = [], [], []
        for a in plan.jagged_parallel_axes:
            body.append(f"{a}_size = {p.segment_extent(a)}")
            p.outer_names.add(f"{a}_size")
            block = p.need("block_" + a)
            if a in plan.aligned_tiles:  # a segment's first block may start before its rows
                body.append(f"{a}_start = {p.tile_start_of(a, f'{a}_index', block)}")
                p.outer_names.add(f"{a}_start")
                check = f"jnp.maximum({a}_start, 0) < {a}_size"
            else:
                check = f"{a}_index * {block} < {a}_size"
            has_rows = p.tile_has_rows(a, f"{a}_index", block, p.segment_extent(a))
            has_rows = has_rows if a in plan.aligned_tiles else f"({has_rows})"  # a call needs no parentheses
            if a not in plan.idle_tile_axes:
                continue  # kept whole: its one tile per segment always does its work
            written = plan.per_segment_outputs(a)
            if written:
                per_segment += written
                check, has_rows = f"({check}) | ({a}_index == 0)", f"(({has_rows}) | ({a}_index == 0))"
            parallel_checks.append(check)
            idle_checks.append(has_rows)
        if parallel_checks:
            joined = " & ".join(f"({c})" if len(parallel_checks) > 1 else c for c in parallel_checks)
            if per_segment:
                written = ", ".join(dict.fromkeys(per_segment))
                body.append(f"# a tile past its segment's end does no work; an empty segment's first still writes {written}")
                body.append(f"tile_valid = {joined}")
            else:
                body.append(f"tile_valid = {joined}  # a tile past its segment's end does no work")

        if ordered is None:
            body += [""] + def_block("compute", p.section("step")) + [""]
            body.append("lax.cond(tile_valid, compute, lambda: None)" if parallel_checks else "compute()")
        else:
            passes = k.passes
            first = f"{ordered}_index == 0"
            if passes > 1:
                tiles = p.need(tile_count(ordered))
                body.append(f"{ordered}_pass, {ordered}_index = lax.div({ordered}_step, {tiles}), lax.rem({ordered}_step, {tiles})")
                first = f"{ordered}_step == 0"
            body += [""] + def_block("_init", p.init_lines(), f"@pl.when({first})") + [""]
            steps = []
            for n in range(passes):
                step = Section("step", n)
                for st in k.statements:
                    if st.phase == "step" and st.pass_index == n:
                        p.statement(st, step)
                steps.append(step)
            checks = ["tile_valid"] if parallel_checks else []
            if ordered in plan.aligned_tiles:  # a segment's first block may start before its rows
                checks.append(f"(jnp.maximum({p.tile_start(steps[0])}, 0) < {p.extent(ordered, steps[0])})")
            elif plan.axes[ordered].mode == "jagged":
                checks.append(f"({p.tile_start(steps[0])} < {p.extent(ordered, steps[0])})")
            if plan.mask_skip:
                checks.append("tile_live")
                live = p.live_condition(steps[0])
            # the guard needs the ordered tile's start and extent: computed outside the steps
            for step in steps:
                body += [line for line in step.indices if line not in body]
                step.indices = []
            if plan.mask_skip:
                body += [f"# {w}" for w in plan.why(plan.mask_skip.statement, "block_spec")] + [f"tile_live = {live}"]
            for n, step in enumerate(steps):
                name = "step" if passes == 1 else f"pass_{n + 1}"
                guard = checks + ([f"({ordered}_pass == {n})"] if passes > 1 else [])
                if passes > 1:
                    body.append(f"# pass {n + 1} of {passes} over '{ordered}': {p.pass_summary(n)}")
                body += def_block(name, step.code()) + [""]
                body.append(f"lax.cond({' & '.join(guard)}, {name}, lambda: None)" if guard else f"{name}()")
                body.append("")
            last = f"{ordered}_index == {p.need(tile_count(ordered))} - 1"
            if passes > 1:
                last = f"{ordered}_step == {passes} * {tile_count(ordered)} - 1"
            guard = f"tile_valid & ({last})" if parallel_checks else last
            final = p.section("final")
            if final or passes == 1:
                body += def_block("_finalize", final, f"@pl.when({guard})")
        p.uses.add("lax")

        piped = [op for op in plan.inputs if op.memory != "any"]
        refs = [op.ref for op in piped] + [op.ref for op in plan.outputs]
        lines += [f"def body(pipeline_step, {', '.join(refs)}):"] + indent(body) + [""]
        grid = []
        for a in plan.printed_pipeline_grid:
            if a not in plan.axes:  # real_tiles_only's axis over the real tiles
                grid.append(p.need(f"num_{a}s"))
                continue
            grid.append(p.need(tile_count(a)) if plan.axes[a].blocked else p.need(a))
            if a == ordered and k.passes > 1:  # walked once per pass
                grid[-1] = f"{k.passes} * {grid[-1]}"
        for a in plan.pipeline_grid:
            if plan.axes[a].blocked:
                p.need(f"block_{a}")
        for op in plan.inputs + plan.outputs:
            for d in k.tensors[op.tensor].dims:
                if plan.axes[d].mode in ("full", "tiled"):
                    p.need(d)
        maps = IndexMaps(names, visit)
        clamp = masked_tile_clamp(plan, p)
        held_lines = []
        if plan.holds_idle_tiles:  # an idle tile stays on the block the real tile before it ended on
            params = ", ".join(logical)
            held_lines = [f"def {ordered}_index_held({params}):"] + indent(
                [f"# {w}" for w in plan.why(ordered, "block_spec") if w.startswith("idle_tiles_hold:")]
                + [f"return jnp.where({' & '.join(idle_checks)}, {ordered}_index, {p.need(tile_count(ordered))} - 1)"]
            ) + [""]
            held = f"{ordered}_index_held({params})"
            clamp = clamp.replace(f"{ordered}_index", held) if clamp else held
        tiles = tile_count(ordered) if k.passes > 1 else None
        in_specs = [block_spec(plan, op, maps, clamp, tiles) for op in piped]
        out_specs = [block_spec(plan, op, maps, tiles=tiles) for op in plan.outputs]
        semantics = ", ".join(
            "pltpu.ARBITRARY" if _semantics(plan, a) != "parallel" else "pltpu.PARALLEL"
            for a in plan.printed_pipeline_grid
        )
        hbm = [op.ref.removesuffix("_ref") + "_hbm_ref" for op in piped + plan.outputs]
        lines += held_lines + maps.lines()
        lines += [
            f"# {plan.lowering_reason}",
            "pltpu.emit_pipeline(",
            "    body,",
            f"    grid={tuple_text(grid)},",
        ]
        lines += spec_lines("in_specs", in_specs, "    ")
        lines += spec_lines("out_specs", out_specs, "    ")
        lines += [
            f"    dimension_semantics=({semantics}{',' if len(plan.printed_pipeline_grid) == 1 else ''}),",
            "    _explicit_indices=True,",
            f")({', '.join(hbm)})",
        ]
        p.uses |= maps.helpers
        groups = [
            RefGroup(
                "scalar prefetch (SMEM)",
                [(f"{t.name}_ref", "segment offsets") for t in k.scalars]
                + [(f"{m}_ref", f"each visit's {m.rsplit('_', 1)[1]}") for m in plan.visit_maps],
            ),
            RefGroup(
                "inputs and outputs, left in HBM: the pipeline moves their blocks",
                [(op.ref.removesuffix("_ref") + "_hbm_ref", p.hbm_comment(op)) for op in plan.inputs + plan.outputs],
            ),
            RefGroup("scratch", p.accumulator_refs()),
        ]
        return KernelSource(f"_{k.name}_kernel", groups, p.static_args, lines, p.uses)

    # -- the entry point
    def entry_prelude(self, entry):
        empty_totals(entry)
        p = entry.plan
        for a in entry.blocked_axes():
            if a in p.aligned_tiles:  # a segment of max rows overlaps one more block where it starts mid-block
                entry.lines.append(f"num_{a}_tiles = pl.cdiv({entry.block_bound(a)} + block_{a} - 1, block_{a})")
            else:
                entry.lines.append(f"num_{a}_tiles = pl.cdiv({entry.block_bound(a)}, block_{a})")
        if p.visited_tiles:
            segment, axis = p.visited_tiles
            offsets = p.ir.axes[axis].jagged.offsets
            bound = f"{segment} * {tile_count(axis)}"
            starts, ends = f"{offsets}[:-1]", f"{offsets}[1:]"
            if axis in p.aligned_tiles:
                # the total is known: the segments share at most one block at each boundary
                total = f"min({bound}, pl.cdiv({axis}, block_{axis}) + {segment} - 1)"
                tiles = [
                    "# aligned_tiles: each segment visits the aligned blocks its rows overlap",
                    f"{axis}_tiles = jnp.where({ends} > {starts}, ({ends} - 1) // block_{axis} - {starts} // block_{axis} + 1, 0)",
                ]
            else:
                # the total is known: each segment adds at most one partial tile
                total = f"min({bound}, ({axis} + {segment} * (block_{axis} - 1)) // block_{axis})"
                tiles = [f"{axis}_tiles = pl.cdiv(jnp.maximum({ends} - {starts}, 0), block_{axis})"]
            if any(axis in t.dims for t in p.ir.inputs):
                bound = total
            entry.lines += [
                f"# real_tiles_only: the pipeline visits the real '{axis}' tiles of every segment, and no others",
                f"num_{axis}_visits = {bound}",
                *tiles,
                f"{', '.join(p.visit_maps)} = _visited_tiles({axis}_tiles, num_{axis}_visits)",
            ]
            entry.uses_visited_tiles = True

    def pallas_call(self, entry, kernel_name):
        p = entry.plan
        hbm = "pl.BlockSpec(memory_space=pl.ANY)"
        lines = [
            "return pl.pallas_call(",
            f"    {kernel_name},",
            "    grid_spec=pltpu.PrefetchScalarGridSpec(",
            f"        num_scalar_prefetch={len(p.prefetched)},",
            f"        grid={tuple_text(list(p.grid)) if p.grid else '(1,)'},",
            f"        in_specs=[{', '.join(hbm for _ in p.inputs)}],",
            f"        out_specs={one_or_list([hbm for _ in p.outputs])},",
        ]
        lines += scratch_lines(entry.accumulator_scratch(), "        ")
        lines += ["    ),", f"    out_shape={one_or_list(entry.out_shapes())},"]
        # The outer pipeline is one sequential walk; the grid lowering's segments are independent.
        return lines + call_tail(entry, [p.axes[a].semantics for a in p.grid] or ["arbitrary"])

    def report(self, plan):
        k = plan.ir
        grid = plan.printed_pipeline_grid
        semantics = ", ".join(_semantics(plan, a) for a in grid)
        out = [
            f"emit_pipeline grid: ({', '.join(_extent(plan, a) for a in grid)}), semantics ({semantics})",
            f"scalar prefetch (SMEM): {', '.join(plan.prefetched)}; every tensor stays in HBM (pl.ANY) "
            "and the pipeline moves its blocks",
        ]
        if k.passes > 1:
            out.append(
                f"loop: '{k.ordered_axis}' is walked {k.passes} times, last in the pipeline grid; "
                "each pass folds the reductions that read the previous pass's, the last writes the outputs"
            )
        elif k.ordered_axis:
            out.append(
                f"loop: '{k.ordered_axis}' is walked in order, last in the pipeline grid; "
                "accumulators init on its first step, finalize on its last"
            )
        for a in sorted(plan.aligned_tiles):
            j = k.axes[a].jagged
            written = [t.name for t in k.outputs if a in t.dims]
            does = (f"writes only its own rows of {', '.join(written)}, where the blocks it shares keep its "
                    "neighbours'" if written else "masks the rows of its neighbours")
            out.append(
                f"tiles: '{a}' in blocks aligned to the array, cdiv({j.max} + block_{a} - 1, block_{a}) per segment: "
                f"each segment visits the blocks its rows overlap and {does}"
            )
        for name in plan.unit_major:
            dims = list(k.tensors[name].dims)
            why = ("its jagged rows start at any offset, and Mosaic slices the last two dims only at offsets aligned "
                   "to their tiles" if plan.axes[dims[-2]].mode == "jagged" else
                   f"its blocks are single '{dims[-2]}' rows of bounded length, on which libtpu 0.0.42 aborts")
            out.append(f"layout: {name} is passed as [{', '.join(dims[:-1] + ['1'] + dims[-1:])}]: {why}")
        return out


def _visit_lines(plan) -> dict[str, str]:
    """real_tiles_only: the segment and tile indices a visit stands for -> the line reading each."""
    if plan.visited_tiles is None:
        return {}
    segment, axis = plan.visited_tiles
    names = (f"{segment}_index", f"{axis}_index")
    return {name: f"{name} = {m}_ref[{axis}_visit]" for name, m in zip(names, plan.visit_maps)}


def _semantics(plan, a: str) -> str:
    """A pipeline grid axis's semantics; real_tiles_only's visits take their jagged axis's."""
    return plan.axes[a if a in plan.axes else plan.visited_tiles[1]].semantics


def _extent(plan, a: str) -> str:
    if a not in plan.axes:  # real_tiles_only's visits
        segment, axis = plan.visited_tiles
        j = plan.ir.axes[axis].jagged
        per_segment = f"{j.max} + block_{axis} - 1" if axis in plan.aligned_tiles else j.max
        return f"real tiles of ({segment}, cdiv({per_segment}, block_{axis}))"
    ap = plan.axes[a]
    if ap.mode == "jagged":
        j = plan.ir.axes[a].jagged
        return f"cdiv({j.max} + block_{a} - 1, block_{a})" if a in plan.aligned_tiles else f"cdiv({j.max}, block_{a})"
    return f"cdiv({a}, block_{a})" if ap.mode == "tiled" else a


class OuterPipeline(_Pipeline):
    name = "outer_pipeline"
    visits_real_tiles = True
    aligns_jagged_tiles = True

    def reason(self, origin):
        return (
            f"outer_pipeline ({origin}): segments and tiles folded into one emit_pipeline, so the "
            "next block's DMA overlaps the current one across segment boundaries (seed 004: 6.68 -> 2.53 ms)"
        )

    def arrange(self, grid, axes):
        return [], pipeline_order(grid, axes)


class SegmentGrid(_Pipeline):
    name = "grid"

    def reason(self, origin):
        return (
            f"grid ({origin}): a pallas_call grid over segments, each running its own "
            "emit_pipeline, which drains and refills its DMAs at every segment"
        )

    def arrange(self, grid, axes):
        segments = [a for a in grid if axes[a].mode == "segment"]
        return segments, pipeline_order([a for a in grid if a not in segments], axes)


def _fills(k, tensor: str, axis: str) -> set[float]:
    """The identities of the reductions over `axis` that read `tensor` directly."""
    from codegen import ir

    fills = set()
    for st in k.statements:
        for v in ir.walk(st.value):
            if isinstance(v, ir.Reduce) and v.axis == axis and isinstance(v.operand, ir.Load) and v.operand.tensor == tensor:
                fills.add(ir.REDUCTIONS[v.kind])
            elif isinstance(v, ir.Dot) and v.axis == axis and any(
                isinstance(x, ir.Load) and x.tensor == tensor for x in (v.lhs, v.rhs)
            ):
                fills.add(0.0)
    return fills
