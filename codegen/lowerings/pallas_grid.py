"""BlockSpecs on the pallas_call grid: the lowering of dense kernels."""

from __future__ import annotations

from codegen.lowerings.base import Lowering, call_tail, one_or_list, scratch_lines, spec_lines
from codegen.printer import (
    IndexMaps,
    KernelPrinter,
    KernelSource,
    RefGroup,
    Section,
    block_spec,
    def_block,
    grid_parameter,
    masked_tile_clamp,
    snake_last,
    snake_tile,
    tuple_text,
)


class PallasGrid(Lowering):
    name = "pallas_grid"
    walks_in_snake_order = True
    walks_in_passes = True

    def applies(self, k, axes):
        return not any(a.mode in ("jagged", "paged") for a in axes.values())

    def reason(self, origin):
        return "no jagged or paged axis: BlockSpecs on the pallas_call grid"

    def kernel(self, plan):
        k, ordered = plan.ir, plan.ir.ordered_axis
        p = KernelPrinter(plan)
        p.program_ids = {a: i for i, a in enumerate(plan.grid) if a != ordered}
        if ordered is None:
            lines = p.section("step")
        elif k.passes > 1:
            lines = p.passes(plan.grid.index(ordered))
        else:
            index = plan.grid.index(ordered)
            counter = f"{ordered}_index"  # which step of the ordered axis: its block, unless walked in snake order
            if plan.snake_outer:
                counter = f"{ordered}_step"
                p.uses.add("lax")
                lines = [f"{counter} = pl.program_id({index})"]
                lines += [f"# {w}" for w in plan.why(ordered, "block_spec")]
                p.uses.add("snake_block")
                outer = f"pl.program_id({plan.grid.index(plan.snake_outer)})"
                last = snake_last(plan, p.need, lambda a: f"pl.program_id({plan.grid.index(a)})")
                lines += [f"{ordered}_index = {snake_tile(outer, counter, f'pl.num_programs({index})', last)}", ""]
            else:
                lines = [f"{ordered}_index = pl.program_id({index})", ""]
            lines += def_block("_init", p.init_lines(), f"@pl.when({counter} == 0)") + [""]
            if plan.mask_skip:
                step = Section("step")
                for st in k.statements:
                    if st.phase == "step":
                        p.statement(st, step)
                live = p.live_condition(step)
                lines += step.indices + [f"# {w}" for w in plan.why(plan.mask_skip.statement, "block_spec")]
                step.indices = []
                lines += [f"tile_live = {live}", ""]
                lines += def_block("_step", step.code(), "@pl.when(tile_live)") + [""]
            else:
                lines += p.section("step") + [""]
            last = f"{counter} == pl.num_programs({index}) - 1"
            lines += def_block("_finalize", p.section("final"), f"@pl.when({last})")
        groups = [
            RefGroup("inputs", [(op.ref, p.block_comment(op)) for op in plan.inputs]),
            RefGroup("outputs", [(op.ref, p.block_comment(op)) for op in plan.outputs]),
            RefGroup("scratch", p.accumulator_refs()),
        ]
        return KernelSource(f"_{k.name}_kernel", groups, p.static_args, lines, p.uses)

    def pallas_call(self, entry, kernel_name):
        p = entry.plan
        grid = [f"pl.cdiv({a}, block_{a})" if p.axes[a].blocked else a for a in p.grid]
        ordered, tiles = p.ir.ordered_axis, None
        if p.ir.passes > 1:  # the ordered axis, walked once per pass
            tiles = f"pl.cdiv({ordered}, block_{ordered})"
            grid[p.grid.index(ordered)] = f"{p.ir.passes} * {tiles}"
        maps = IndexMaps([grid_parameter(p, a) for a in p.grid])
        clamp = masked_tile_clamp(p)
        if p.snake_outer:  # the block index of this step of the ordered axis
            count = f"pl.cdiv({ordered}, block_{ordered})"
            walked = snake_tile(f"{p.snake_outer}_index", f"{ordered}_step", count, snake_last(p), clamp=True)
            clamp = clamp.replace(f"{ordered}_index", walked) if clamp else walked
        in_specs = [block_spec(p, op, maps, clamp, tiles) for op in p.inputs]
        out_specs = [block_spec(p, op, maps, tiles=tiles) for op in p.outputs]
        lines = maps.lines()
        lines += [
            "return pl.pallas_call(",
            f"    {kernel_name},",
            f"    grid={tuple_text(grid) if grid else '()'},",
        ]
        lines += spec_lines("in_specs", in_specs, "    ")
        lines += spec_lines("out_specs", out_specs, "    ", as_list=len(out_specs) > 1)
        lines += [f"    out_shape={one_or_list(entry.out_shapes())},"]
        lines += scratch_lines(entry.accumulator_scratch(), "    ")
        return lines + call_tail(entry, [p.axes[a].semantics for a in p.grid])

    def report(self, plan):
        out = []
        if plan.ir.passes > 1:
            out.append(
                f"loop: '{plan.ir.ordered_axis}' is walked {plan.ir.passes} times, last in the grid; "
                "each pass folds the reductions that read the previous pass's, the last writes the outputs"
            )
        elif plan.ir.ordered_axis:
            out.append(
                f"loop: '{plan.ir.ordered_axis}' is walked in order, last in the grid; "
                "accumulators init on its first step, finalize on its last"
            )
        return out
