"""`codegen plan`: the plan as readable tables."""

from __future__ import annotations

from codegen.chips import CHIPS, MiB
from codegen.plan import Plan, format_layout
from codegen.rules import RULES


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _bytes(n: int) -> str:
    if n >= MiB:
        return f"{n / MiB:.2f} MiB"
    return f"{n / 1024:.1f} KiB"


def format_plan(plan: Plan) -> str:
    k = plan.ir
    out = [f"plan for {k.name} ({k.spec.file}) on {plan.chip.name}", ""]

    out.append("axes")
    rows = []
    for name, a in plan.axes.items():
        grid = str(plan.grid.index(name)) if name in plan.grid else "-"
        block = {"tiled": f"{a.block}", "jagged": f"{a.block}", "squeezed": "1 (squeezed)",
                 "segment": "1 (squeezed)", "full": "whole extent", "paged": f"{a.block} pages"}[a.mode]
        grid = str((plan.grid + plan.pipeline_grid).index(name)) if name in plan.grid + plan.pipeline_grid else "-"
        rows.append([name, a.mode, block, grid, a.semantics or "-", a.reason])
    out += _table(["axis", "mode", "block", "grid", "semantics", "why"], rows)
    out.append("")

    def extent(a):
        ap = plan.axes[a]
        if ap.mode == "jagged":
            return f"cdiv({k.axes[a].jagged.max}, block_{a})"
        return f"cdiv({a}, block_{a})" if ap.mode == "tiled" else a

    out.append(f"lowering: {plan.lowering_reason}" if plan.lowering_reason else "")
    out.append(f"pallas_call grid: ({', '.join(extent(a) for a in plan.grid)})" if plan.grid else "pallas_call grid: (1,)")
    out += plan.unit.report(plan)
    out.append("")

    out.append("operands")
    rows = []
    for op in plan.inputs:
        t = k.tensors[op.tensor]
        if op.memory == "any":
            where = "HBM (pl.ANY), not copied"
        elif op.memory == "rows":
            where = "HBM (pl.ANY); each tile's rows copied by the kernel into one VMEM buffer"
        elif op.memory == "paged":
            sems = "a DMA semaphore per slot" if plan.semaphore_per_slot else "one DMA semaphore for both slots"
            where = f"HBM (pl.ANY); pages DMA'd into {plan.paged_slots} VMEM slot{'s' if plan.paged_slots > 1 else ''}, {sems}"
        else:
            where = f"VMEM block ({', '.join(_block(plan, d) for d in t.dims)}), {op.buffers} buffer{'s' if op.buffers > 1 else ''}"
        notes = [f"aliased to output {op.alias_output}"] if op.alias_output is not None else []
        if op.memory == "blocked" and plan.reuse(op.tensor):
            notes.append(plan.reuse(op.tensor))
        rows.append(["in", op.tensor, f"{t.dtype}[{', '.join(t.dims)}]", where, "; ".join(notes)])
    for i, op in enumerate(plan.outputs):
        t = k.tensors[op.tensor]
        where = f"VMEM block ({', '.join(_block(plan, d) for d in t.dims)}), 2 buffers"
        if op.memory == "rows":
            where = "HBM (pl.ANY); each tile's rows copied out by the kernel from one VMEM buffer"
        rows.append(["out", op.tensor, f"{t.dtype}[{', '.join(t.dims)}]", where, f"output {i}"])
    out += _table(["", "tensor", "type", "memory", "notes"], rows)
    out.append("")

    if k.accumulators:
        out.append("accumulators (VMEM scratch)")
        rows = []
        for name, acc in k.accumulators.items():
            origin = f"synthesized for '{acc.synthesized_from}'" if acc.synthesized_from else "declared"
            rows.append([name, acc.dtype, format_layout(plan.accumulator_layouts[name]), acc.over, repr(acc.init), origin])
        out += _table(["name", "dtype", "block layout", "over", "init", "origin"], rows)
        out.append("")

    out.append("statements")
    rows = [[st.name, st.target, st.phase, format_layout(plan.statement_layouts[st.name])] for st in k.statements]
    out += _table(["name", "kind", "runs", "layout"], rows)
    out.append("")

    out.append("rules")
    rows = []
    for rule in RULES:
        state = "on" if plan.rules_enabled[rule.name] else "off"
        tuned = plan.ir.spec.tune.get(plan.chip.name)
        if tuned is not None and rule.name in tuned.rules:
            state += f" (tune.{plan.chip.name})"
        decisions = [d for d in plan.decisions if d.rule == rule.name]
        if not decisions:
            rows.append([rule.name, state, "-", "skipped", "nothing it applies to"])
        for d in decisions:
            rows.append([rule.name, state, d.subject, "fired" if d.applied else "skipped", d.reason])
    out += _table(["rule", "switch", "subject", "result", "why"], rows)
    out.append("  " + "; ".join(f"{r.name}: {r.summary} [{r.seed}]" for r in RULES))
    out.append("")

    vm = plan.vmem
    out.append("VMEM per grid step (blocks at their default sizes)")
    out += _table(["item", "bytes"], [[what, _bytes(n)] for what, n in vm.items] + [["total", _bytes(vm.total)]])
    if vm.assumed:
        out.append(f"  assumed extent {', '.join(vm.assumed)} = 512 (set axes.<name>.max to size it)")
    budgets = ", ".join(
        f"{c.name} {_bytes(c.scoped_vmem_default)} scoped / {c.vmem_bytes // MiB} MiB" for c in CHIPS.values()
    )
    verdict = "fits the default scoped limit" if plan.vmem_limit is None else f"over the scoped default: vmem_limit_bytes={plan.vmem_limit}"
    out.append(f"  {plan.chip.name}: {verdict}  (budgets: {budgets})")
    return "\n".join(out) + "\n"


def _block(plan: Plan, axis: str) -> str:
    a = plan.axes[axis]
    return {"tiled": f"block_{axis}", "jagged": f"BoundedSlice(block_{axis})", "squeezed": "None",
            "segment": "None", "full": axis}[a.mode]
