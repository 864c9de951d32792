"""Paged kernels: a grid over sequences (and heads), the paged axis walked in-kernel.

Position t of sequence b lives at page table[b, t // page_size], row t % page_size.
Each step of an in-kernel loop DMAs one block of pages from HBM into one of two
VMEM slots, while the other slot's block is computed on (seed 003).
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
    indent,
    tile_bounds,
    tuple_text,
)


class PagedWalk(Lowering):
    name = "paged"
    loop_trips_unseen_by_estimate = True
    # the paged axis is an in-kernel loop: a mask bounds it at its last live block

    def applies(self, k, axes):
        return any(a.mode == "paged" for a in axes.values())

    def reason(self, origin):
        return (
            "paged: the paged axis is walked inside each grid step, its pages DMA'd from HBM by the "
            "kernel; grid steps run in order ('arbitrary') because a step starts the next step's DMAs"
        )

    def arrange(self, grid, axes):
        grid = [a for a in grid if axes[a].mode != "paged"]
        # the segment first (empty ones are skipped in order), the tiles of its jagged axes last
        grid.sort(key=lambda a: {"segment": 0, "jagged": 2}.get(axes[a].mode, 1))
        for a in grid:
            axes[a].semantics = "arbitrary"
        return grid, []

    def operand_memory(self, tensor, axes):
        if any(axes[d].mode == "paged" for d in tensor.dims):
            return "paged"
        return self.output_memory(tensor, axes)

    def output_memory(self, tensor, axes):
        # a BlockSpec on the pallas_call grid cannot bound a jagged tile: the kernel copies its rows
        return "rows" if any(axes[d].mode == "jagged" for d in tensor.dims) else "blocked"

    def index_map_tail(self):
        return ["*_"]  # the scalar-prefetch refs, unused by the maps

    def kernel(self, plan):
        k = plan.ir
        p = KernelPrinter(plan)
        lines = _paged_body(plan, p)
        paged = [op for op in plan.inputs if op.memory == "paged"]
        groups = [
            RefGroup("scalar prefetch (SMEM)", [(f"{t.name}_ref", t.scalar) for t in k.scalars]),
            RefGroup("inputs", [(op.ref, _ref_comment(p, op)) for op in plan.inputs]),
            RefGroup("outputs", [(op.ref, _ref_comment(p, op)) for op in plan.outputs]),
            RefGroup(
                "scratch",
                p.accumulator_refs()
                + [(f"{op.tensor}_buffer", f"VMEM slots for blocks of {op.tensor}'s pages") for op in paged]
                + [(f"{op.tensor}_sems", f"DMA semaphores of {op.tensor}'s slots") for op in paged]
                + ([("slot_ref", "the slot this block is in"), ("prefetched_ref", "whether this block's DMAs are already started")]
                   if plan.paged_prefetch else [])
                + [(f"{op.tensor}_rows", f"this tile's rows of {op.tensor}") for op in _rows(plan)]
                + ([("rows_sems", "DMA semaphores of the row copies (in, out)")] if _rows(plan) else []),
            ),
        ]
        return KernelSource(f"_{k.name}_kernel", groups, p.static_args, lines, p.uses)

    def scratch(self, entry) -> list[tuple[str, str]]:
        p, k = entry.plan, entry.plan.ir
        out = []
        paged = [op for op in p.inputs if op.memory == "paged"]
        for op in paged:
            t = k.tensors[op.tensor]
            axis = next(d for d in t.dims if p.axes[d].mode == "paged")
            rows = ["pages_per_compute_block * page_size"] + list(t.dims[t.dims.index(axis) + 1:])
            out.append((f"pltpu.VMEM({tuple_text([str(p.paged_slots)] + rows)}, {entry.dtype(t)})", f"{op.tensor}_buffer"))
        sems = "pltpu.SemaphoreType.DMA((2,))" if p.paged_prefetch and p.semaphore_per_slot else "pltpu.SemaphoreType.DMA(())"
        out += [(sems, f"{op.tensor}_sems") for op in paged]
        if p.paged_prefetch:
            out += [("pltpu.SMEM((1,), jnp.int32)", "slot_ref"), ("pltpu.SMEM((1,), jnp.int32)", "prefetched_ref")]
        for op in _rows(p):
            t = k.tensors[op.tensor]
            dims = [f"block_{d}" if p.axes[d].blocked else d for d in p.block_dims(t.dims)]
            out.append((f"pltpu.VMEM({tuple_text(dims)}, {entry.dtype(t)})", f"{op.tensor}_rows"))
        if _rows(p):
            out.append(("pltpu.SemaphoreType.DMA((2,))", "rows_sems"))
        return out

    def pallas_call(self, entry, kernel_name):
        p, k = entry.plan, entry.plan.ir
        maps = IndexMaps([f"{a}_index" for a in p.grid] + self.index_map_tail())
        hbm = "pl.BlockSpec(memory_space=pl.ANY)"
        in_specs = [block_spec(p, op, maps) if op.memory == "blocked" else hbm for op in p.inputs]
        out_specs = [block_spec(p, op, maps) if op.memory == "blocked" else hbm for op in p.outputs]
        grid = [f"pl.cdiv({entry.block_bound(a)}, block_{a})" if p.axes[a].blocked else a for a in p.grid]
        lines = maps.lines()
        lines += [
            "return pl.pallas_call(",
            f"    {kernel_name},",
            "    grid_spec=pltpu.PrefetchScalarGridSpec(",
            f"        num_scalar_prefetch={len(k.scalars)},",
            f"        grid={tuple_text(grid)},",
        ]
        lines += spec_lines("in_specs", in_specs, "        ")
        lines += spec_lines("out_specs", out_specs, "        ", as_list=len(out_specs) > 1)
        lines += scratch_lines(entry.accumulator_scratch() + self.scratch(entry), "        ")
        lines += [
            "    ),",
            f"    out_shape={one_or_list(entry.out_shapes())},",
        ]
        return lines + call_tail(entry, [p.axes[a].semantics for a in p.grid])

    def entry_prelude(self, entry):
        empty_totals(entry)

    def signature_keywords(self, plan):
        return [
            (f"pages_per_compute_block={plan.default_block(a.name)}",
             f"pages_per_compute_block: pages of {a.name} per block of the in-kernel loop.")
            for a in plan.axes.values() if a.mode == "paged"
        ]

    def report(self, plan):
        k = plan.ir
        out = [f"scalar prefetch (SMEM): {', '.join(t.name for t in k.scalars)}; each page id is read once per block, for every paged tensor"]
        if plan.paged_prefetch:
            out.append("prefetch: the next block's DMAs (maybe of the next grid step) start before this block is computed on; empty segments are skipped")
        else:
            out.append("prefetch: none; each block is fetched and waited for before it is computed on")
        if k.ordered_axis:
            out.append(f"loop: '{k.ordered_axis}' is walked by a loop inside each grid step; accumulators init before it, finalize after it")
        return out


def _rows(plan) -> list:
    """Operands whose jagged rows the kernel copies itself, inputs first."""
    return [op for op in plan.inputs + plan.outputs if op.memory == "rows"]


def _ref_comment(p: KernelPrinter, op) -> str:
    if op.memory == "paged":
        return "HBM: its pages are DMA'd by the kernel"
    if op.memory == "rows":
        return "HBM: each tile's rows are copied by the kernel"
    return p.block_comment(op)


def _rows_copy(plan, op, direction: str) -> str:
    """A DMA of this tile's rows of `op` between HBM and its VMEM buffer."""
    hbm, rows = [], None
    for d in plan.kernel_dims(op.tensor):
        if d == "1":  # a unit dim the entry point inserted (Plan.unit_major): its one index
            hbm.append("0")
            continue
        mode = plan.axes[d].mode
        if mode == "jagged":
            rows = f"{d}_rows"
            hbm.append(rows)
        elif mode in ("squeezed", "segment"):
            hbm.append(f"{d}_index")
        else:
            hbm.append(":")
    while hbm and hbm[-1] == ":":
        hbm.pop()
    source = f"{op.ref}.at[{', '.join(hbm)}]"
    buffer = f"{op.tensor}_rows.at[pl.ds(0, {rows}.size)]"
    if direction == "in":
        return f"pltpu.make_async_copy({source}, {buffer}, rows_sems.at[0])"
    return f"pltpu.make_async_copy({buffer}, {source}, rows_sems.at[1])"


def _paged_body(plan, p: KernelPrinter) -> list[str]:  # noqa: C901
    """A grid over segments (and heads); the paged axis walked by an in-kernel loop over blocks
    of pages, each page DMA'd from HBM into a VMEM slot."""
    k, t = plan.ir, plan.ir.ordered_axis
    paged_spec = k.axes[t].paged
    seg = paged_spec.segment
    paged_ops = [op for op in plan.inputs if op.memory == "paged"]
    inner = [a for a in plan.grid if a != seg]
    p.need("pages_per_compute_block")
    p.need("page_size")
    jagged = [a for a in plan.grid if plan.axes[a].mode == "jagged"]
    lines = [f"{a}_index = pl.program_id({plan.grid.index(a)})" for a in plan.grid]
    lines += [
        f"block_{t} = pages_per_compute_block * page_size",
        f"{t}_size = {paged_spec.lengths}_ref[{seg}_index]",
        f"num_{t}_blocks = pl.cdiv({t}_size, block_{t})",
    ]
    sec = Section("step")  # names the guard and the clamp compute, shared with the loop body
    sec.loaded.add(f"{t}_size")
    if jagged:
        for a in jagged:
            j = k.axes[a].jagged
            start = p.block_start(a, sec)
            size = p.extent(a, sec)
            sec.indices.append(
                f"{a}_rows = pl.ds({j.offsets}_ref[{seg}_index] + {start}, "
                f"jnp.minimum({p.need('block_' + a)}, {size} - {start}))"
            )
        valid = " & ".join(f"({a}_start < {a}_size)" for a in jagged)
        lines += sec.indices
        sec.indices = []
        lines += [
            f"tile_valid = {valid}  # a tile past its segment's end does no work",
            f"num_{t}_blocks = jnp.where(tile_valid, num_{t}_blocks, 0)",
        ]
    if plan.mask_skip:
        last = _masked_last_block(plan, p, sec)
        lines += sec.indices
        sec.indices = []
        lines += [f"# {w}" for w in plan.why(plan.mask_skip.statement, "block_spec")]
        # at least one block, so that a block prefetched for this step is always waited for
        lines.append(f"num_{t}_blocks = jnp.minimum(num_{t}_blocks, jnp.maximum({last} + 1, 1))")
    lines.append("")

    def sem(op, slot: str) -> str:
        per_slot = plan.paged_prefetch and plan.semaphore_per_slot
        return f"{op.tensor}_sems.at[{slot}]" if per_slot else f"{op.tensor}_sems"

    def leading(op) -> list[str]:
        dims = k.tensors[op.tensor].dims
        return list(dims[: dims.index(t)])

    # start_fetch: the DMAs of one block of pages; each page id is read once and serves every
    # paged tensor. wait_fetch never reads the table: a wait only needs the copy's size.
    at = [f"{a}_at" for a in plan.grid]
    fetch = [
        f"def start_fetch({', '.join(at)}, {t}_block, slot):",
        f'    """Start the DMAs of block `{t}_block` of pages into `slot`: each page id is read once."""',
        "    for page in range(pages_per_compute_block):",
        "",
        f"        @pl.when({t}_block * block_{t} + page * page_size < {paged_spec.lengths}_ref[{seg}_at])",
        "        def _(page=page):  # pl.when runs it at once; the default binds this iteration's page",
        f"            page_id = {paged_spec.table}_ref[{seg}_at, {t}_block * pages_per_compute_block + page]",
        "            rows = pl.ds(page * page_size, page_size)",
    ]
    for op in paged_ops:
        index = ", ".join([f"{a}_at" for a in leading(op)] + ["page_id"])
        fetch.append(
            f"            pltpu.make_async_copy({op.ref}.at[{index}], {op.tensor}_buffer.at[slot, rows], {sem(op, 'slot')}).start()"
        )
    fetch += [
        "",
        f"def wait_fetch({t}_block, slot):",
        f'    """Wait for block `{t}_block` in `slot`; the source of each wait only sizes it, so the table is not read."""',
        "    for page in range(pages_per_compute_block):",
        "",
        f"        @pl.when({t}_block * block_{t} + page * page_size < {t}_size)",
        "        def _(page=page):",
        "            rows = pl.ds(page * page_size, page_size)",
    ]
    for op in paged_ops:
        zeros = ", ".join(["0"] * (len(leading(op)) + 1))
        fetch.append(f"            pltpu.make_async_copy({op.ref}.at[{zeros}], {op.tensor}_buffer.at[slot, rows], {sem(op, 'slot')}).wait()")
    lines += fetch + [""]

    if plan.paged_prefetch:
        p.need(seg)
        for a in inner:
            p.need(a)
        here = [f"{a}_index" for a in plan.grid]
        lines += [
            f"def next_block({t}_block):",
            f'    """The block after this one in grid order, skipping empty segments; {seg} == {seg} past the last."""',
            "",
            f"    def advance_{seg}():",
            f"        {seg}_at = lax.while_loop(",
            f"            lambda s: (s < {seg}) & {_empty(plan, 's')}, lambda s: s + 1, {seg}_index + 1",
            "        )",
            f"        return ({seg}_at, {', '.join(['0'] * len(inner) + ['0'])})",
            "",
        ]
        previous = f"advance_{seg}"
        for i, a in enumerate(inner):
            after = ["0"] * (len(inner) - i - 1)
            nxt = here[: i + 1] + [f"{a}_index + 1"] + after + ["0"]
            bound = a
            if plan.axes[a].mode == "jagged":  # this segment's tiles
                bound = f"pl.cdiv({p.segment_extent(a)}, block_{a})"
            lines += [
                f"    def advance_{a}():",
                f"        return lax.cond({a}_index + 1 < {bound}, lambda: ({', '.join(nxt)}), {previous})",
                "",
            ]
            previous = f"advance_{a}"
        lines += [
            f"    return lax.cond({t}_block + 1 < num_{t}_blocks, lambda: ({', '.join(here)}, {t}_block + 1), {previous})",
            "",
        ]
        lines += [
            f"@pl.when({' & '.join(f'({a}_index == 0)' for a in plan.grid)})",
            "def _first_grid_step():",
            "    slot_ref[0] = 0",
            "    prefetched_ref[0] = 0  # nothing is in flight yet",
            "",
        ]
    lines += p.init_lines() + [""]
    if jagged:
        lines += [
            "@pl.when(tile_valid)",
            "def _copy_rows_in():",
        ]
        ins = [op for op in plan.inputs if op.memory == "rows"]
        for op in ins:  # in turn: the copies in share one semaphore
            lines += [f"    {op.tensor}_rows_copy = {_rows_copy(plan, op, 'in')}",
                      f"    {op.tensor}_rows_copy.start()", f"    {op.tensor}_rows_copy.wait()"]
        lines += [""] if ins else ["    pass", ""]

    step = sec
    for st in k.statements:
        if st.phase == "step":
            p.statement(st, step)
    here = ", ".join(f"{a}_index" for a in plan.grid)
    nexts = [f"next_{a}" for a in plan.grid] + [f"next_{t}"]
    if plan.paged_prefetch:
        head = [
            "slot = slot_ref[0]",
            "",
            "@pl.when(prefetched_ref[0] == 0)",
            "def _fetch_this_block():",
            f"    start_fetch({here}, {t}_index, slot)",
            "",
            f"{', '.join(nexts)} = next_block({t}_index)",
            f"has_next = next_{seg} < {seg}",
            "",
            "@pl.when(has_next)",
            "def _prefetch_next_block():  # in flight while this block is computed on",
            f"    start_fetch({', '.join(nexts)}, 1 - slot)",
            "",
            "prefetched_ref[0] = has_next.astype(jnp.int32)",
            f"wait_fetch({t}_index, slot)",
        ]
        tail = ["slot_ref[0] = 1 - slot"]
    else:
        head = ["slot = 0", f"start_fetch({here}, {t}_index, slot)", f"wait_fetch({t}_index, slot)"]
        tail = []
    body = head + step.code() + tail + ["return carry"]
    lines += [f"def step({t}_index, carry):"] + indent(body) + [""]
    lines += [f"lax.fori_loop(0, num_{t}_blocks, step, 0)"]
    lines += p.section("final")
    outs = [op for op in plan.outputs if op.memory == "rows"]
    if outs:
        lines += ["", "@pl.when(tile_valid)", "def _copy_rows_out():"]
        for op in outs:
            lines += [f"    {op.tensor}_rows_copy = {_rows_copy(plan, op, 'out')}",
                      f"    {op.tensor}_rows_copy.start()", f"    {op.tensor}_rows_copy.wait()"]
    p.uses.add("lax")
    return lines


def _empty(plan, s: str) -> str:
    """Code that is true when segment `s` has nothing to do: no positions, or no rows."""
    k = plan.ir
    t = k.ordered_axis
    lengths = k.axes[t].paged.lengths
    seg = k.axes[t].paged.segment
    at = f"jnp.minimum({s}, {seg} - 1)"
    tests = [f"({lengths}_ref[{at}] == 0)"]
    for a in plan.grid:
        if plan.axes[a].mode == "jagged":
            o = k.axes[a].jagged.offsets
            tests.append(f"({o}_ref[{at} + 1] == {o}_ref[{at}])")
    return tests[0] if len(tests) == 1 else "(" + " | ".join(tests) + ")"


def _masked_last_block(plan, p: KernelPrinter, sec: Section) -> str:
    """The last block of the paged loop where the mask can hold, as code."""
    from codegen import masks

    skip = plan.mask_skip
    others = [a for a in skip.axes if a != skip.axis]
    bounds = tile_bounds(plan, others, lambda a: p.block_start(a, sec), p.need)
    _, lasts = masks.clamp_range(skip.condition, skip.axis, f"block_{skip.axis}", bounds, lambda term: p.mask_value(term, sec))
    text = f"num_{skip.axis}_blocks - 1"
    for last in lasts:
        text = f"jnp.minimum({text}, {last})"
    return text
