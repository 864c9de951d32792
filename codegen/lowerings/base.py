"""What every lowering provides, and the pieces of a pallas_call they share."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from codegen import ir
    from codegen.plan import AxisPlan, Plan
    from codegen.printer import KernelSource
    from codegen.render import Entry


class Lowering:
    name: str = ""
    choosable: bool = False  # a spec may pick it with `lowering: NAME`
    # In interpret mode, the kernel asks the backend which TPU it runs on (emit_pipeline does).
    asks_tpu_info: bool = False
    # Its DMAs copy whole blocks, so a block overhanging the array must be bounded explicitly.
    clamps_tails: bool = False
    # It can skip masked tiles of the ordered axis (the mask_skip rule): its ordered axis is a
    # grid axis, whose compute can be guarded and whose index maps can be clamped.
    skips_masked_tiles: bool = True
    # Its ordered axis is a pallas_call grid axis, which the snake_order rule may walk backwards
    # on every other tile of the axis outside it.
    walks_in_snake_order: bool = False
    # It can walk its ordered axis several times (a reduction used against its own axis,
    # not kept whole): the axis's steps are passes * tiles on a grid it indexes.
    walks_in_passes: bool = False
    # Its grid is static, so it launches cdiv(max, block) tiles of a jagged axis per segment,
    # and the index maps of those past the segment's end can hold their blocks still.
    launches_idle_tiles: bool = False
    # Its pipeline grid holds a jagged axis's segments, so the two can fold into one axis over
    # the real tiles (the real_tiles_only rule).
    visits_real_tiles: bool = False
    # Whether its blocks of a jagged axis may be aligned to the array rather than to each
    # segment's start (pl.BoundedSlice blocks in an emit_pipeline).
    aligns_jagged_tiles: bool = False
    # Its ordered axis is walked in a loop whose trip count the compiler's estimate guesses
    # (emit_pipeline's, or one run to a length read at run time): the estimate cannot see
    # what a rule saves by skipping that loop's steps, so tuning leaves such rules on.
    loop_trips_unseen_by_estimate: bool = False

    # -- planning
    def applies(self, k: "ir.KernelIR", axes: dict[str, "AxisPlan"]) -> bool:
        raise NotImplementedError

    def reason(self, origin: str) -> str:
        """Why this lowering; `origin` says who chose it ("the default", "from the spec")."""
        raise NotImplementedError

    def arrange(self, grid: list[str], axes: dict[str, "AxisPlan"]) -> tuple[list[str], list[str]]:
        """Split the planned grid (parallel axes, then the ordered one) into the pallas_call's
        grid and an inner pipeline's grid."""
        return grid, []

    def operand_memory(self, tensor: "ir.TensorInfo", axes: dict[str, "AxisPlan"]) -> str:
        """Where an input lives: "blocked" (VMEM blocks via a BlockSpec), or "paged"."""
        return "blocked"

    def output_memory(self, tensor: "ir.TensorInfo", axes: dict[str, "AxisPlan"]) -> str:
        """Where an output is assembled: "blocked" (a BlockSpec), or "rows"."""
        return "blocked"

    def block_grid(self, plan: "Plan") -> list[str]:
        """The grid axes whose indices BlockSpec index maps receive."""
        return plan.grid

    def index_map_tail(self) -> list[str]:
        """Parameters an index map takes after the grid indices (scalar-prefetch refs)."""
        return []

    def finish(self, plan: "Plan") -> None:
        """Decisions of this lowering's own, once the rest of the plan is made."""

    # -- printing
    def kernel(self, plan: "Plan") -> "KernelSource":
        raise NotImplementedError

    def entry_prelude(self, entry: "Entry") -> None:
        """Entry-point lines between the block sizes and the pallas_call."""

    def pallas_call(self, entry: "Entry", kernel_name: str) -> list[str]:
        raise NotImplementedError

    def signature_keywords(self, plan: "Plan") -> list[tuple[str, str]]:
        """Keyword arguments of the entry point this lowering adds, with their doc lines."""
        return []

    # -- reporting
    def report(self, plan: "Plan") -> list[str]:
        raise NotImplementedError


def call_tail(entry: "Entry", semantics: list[str]) -> list[str]:
    """The keyword arguments every pallas_call ends with, and the call's arguments."""
    p = entry.plan
    lines = []
    if p.aliases:
        offset = len(p.prefetched)
        aliases = ", ".join(f"{i + offset}: {o}" for i, o in p.aliases.items())
        lines += [
            "    # jax 0.10's TPU interpret mode returns an aliased output at its block-padded",
            "    # shape, so interpret mode runs without the alias, which only saves a copy.",
            f"    input_output_aliases={{}} if interpret else {{{aliases}}},",
        ]
    quoted = ", ".join(f'"{s}"' for s in semantics) + ("," if len(semantics) == 1 else "")
    params = f"dimension_semantics=({quoted})"
    if p.vmem_limit:
        params += f", vmem_limit_bytes={p.vmem_limit}"
    if p.vmem_limit:
        lines.append(f"    # {p.vmem_reason}")
    lines += [
        f"    compiler_params=pltpu.CompilerParams({params}),",
        "    cost_estimate=cost,",
        "    interpret=_interpret_mode(interpret),",
        f")({', '.join(entry.call_args)})",
    ]
    return lines


def one_or_list(items: list[str]) -> str:
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else "[" + ", ".join(items) + "]"


def scratch_lines(entries: list[tuple[str, str]], indent: str) -> list[str]:
    """`scratch_shapes=[...]`, one entry a line, each labelled with the kernel ref it becomes."""
    if not entries:
        return []
    return (
        [f"{indent}scratch_shapes=["]
        + [f"{indent}    {text},  # {ref}" for text, ref in entries]
        + [f"{indent}],"]
    )


def spec_lines(key: str, specs: list, indent: str, as_list: bool = True) -> list[str]:
    """`key=[specs]`, one spec a line under the reasons of the rules that shaped it."""
    why = [getattr(s, "why", []) for s in specs]
    if not any(why):
        joined = ", ".join(str(s) for s in specs)
        return [f"{indent}{key}=[{joined}]," if as_list else f"{indent}{key}={joined},"]
    if not as_list and len(specs) == 1:
        return [f"{indent}# {w}" for w in why[0]] + [f"{indent}{key}={specs[0]},"]
    lines = [f"{indent}{key}=["]
    for spec, reasons in zip(specs, why):
        lines += [f"{indent}    # {w}" for w in reasons] + [f"{indent}    {spec},"]
    return lines + [f"{indent}],"]


def empty_totals(entry: "Entry") -> None:
    """Jagged axes whose segments are all empty: no kernel, or a stand-in row to point at."""
    from codegen.printer import tuple_text

    k = entry.plan.ir
    jagged = [a for a in k.axes if k.axes[a].jagged]
    out_axes = [a for a in jagged if all(a in t.dims for t in k.outputs)]
    for a in out_axes:
        empties = ", ".join(f"jnp.zeros({entry.shape(t)}, {entry.dtype(t)})" for t in k.outputs)
        entry.lines.append(f"if {a} == 0:  # every segment is empty: nothing to compute")
        entry.lines.append(f"    return {empties}")
    for a in jagged:
        if a in out_axes:
            continue
        padded = [t for t in k.inputs if a in t.dims and not t.offsets_of]
        if not padded:
            continue
        entry.lines.append(f"if {a} == 0:  # no rows in any segment: the offsets keep every read off this stand-in row")
        for t in padded:
            shape = tuple_text(["1" if d == a else d for d in entry.plan.kernel_dims(t.name)])
            entry.lines.append(f"    {t.name} = jnp.zeros({shape}, {entry.dtype(t)})")
