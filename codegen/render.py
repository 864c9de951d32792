"""Render a plan into module source: the Jinja skeleton plus printed kernel code."""

from __future__ import annotations

import textwrap
from pathlib import Path

import jinja2

from codegen import __version__, ir
from codegen.chips import ITEMSIZE
from codegen.errors import SpecError
from codegen.plan import Plan
from codegen.printer import JNP_DTYPE, block_spec, literal, param_constant, print_kernel

# In the source tree the templates sit beside the package; installed, inside it.
_HERE = Path(__file__).resolve().parent
TEMPLATES = next((p for p in (_HERE / "templates", _HERE.parent / "templates") if p.is_dir()), _HERE.parent / "templates")


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def docstring(text: str, indent: str = "") -> str:
    """A triple-quoted literal whose value is exactly `text`."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    lines = escaped.split("\n")
    body = ("\n" + indent).join(lines) if len(lines) > 1 else lines[0]
    closing = f"\n{indent}" if len(lines) > 1 else ""
    return f'"""{body}{closing}"""'


def _tuple(items: list[str]) -> str:
    if len(items) == 1:
        return f"({items[0]},)"
    return "(" + ", ".join(items) + ")"


def _terms(table: dict[tuple[str, ...], int], order) -> str:
    """A sum of products of sizes, e.g. `2 * b * m * n * k + b * m * n`."""
    if not table:
        return "0"
    rank = lambda name: order.index(name) if name in order else len(order)  # noqa: E731
    ordered = sorted(table.items(), key=lambda kv: (-len(kv[0]), [rank(a) for a in kv[0]], kv[0]))
    parts = []
    for dims, coef in ordered:
        dims = sorted(dims, key=lambda d: (rank(d), d))
        factors = ([str(coef)] if coef != 1 or not dims else []) + list(dims)
        parts.append(" * ".join(factors))
    return " + ".join(parts)


class _Entry:
    """The entry point: argument checks, block sizes, and the pallas_call."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.k = plan.ir
        self.axis_order = list(self.k.axes)
        self.bound: list[str] = []
        self.lines: list[str] = []

    def caller_dims(self, t: ir.TensorInfo) -> list[str]:
        """The caller's dims of `t`: fused axes multiply, a paged axis is (pages, rows per page)."""
        if t.offsets_of:
            return [f"{t.dims[0]} + 1"]
        out = []
        for group in t.fused or tuple((d,) for d in t.dims):
            if len(group) == 1 and self.k.axes[group[0]].paged:
                out += ["num_pages", "page_size"]
            else:
                out.append(" * ".join(group))
        return out

    def shape(self, t: ir.TensorInfo) -> str:
        return _tuple(self.caller_dims(t))

    def kernel_shape(self, t: ir.TensorInfo) -> str:
        return _tuple(list(t.dims))

    def bind_shapes(self) -> None:
        fused: dict[str, tuple[str, ...]] = {}
        for t in self.k.inputs:
            if t.offsets_of:
                if t.dims[0] not in self.bound:
                    self.lines.append(f"{t.dims[0]} = {t.name}.shape[0] - 1")
                    self.bound.append(t.dims[0])
                continue
            names = []
            for dim in self.caller_dims(t):
                if " * " in dim:
                    group = tuple(dim.split(" * "))
                    name = "_".join(group)
                    fused[name] = group
                    names.append(name)
                else:
                    names.append(dim)
            new = [n for n in names if n not in self.bound]
            if len(new) == len(names):
                self.lines.append(f"{', '.join(names)}{',' if len(names) == 1 else ''} = {t.name}.shape")
            else:
                self.lines += [f"{n} = {t.name}.shape[{names.index(n)}]" for n in new]
            self.bound += new
        for name, group in fused.items():
            unknown = [a for a in group if a not in self.bound]
            if len(unknown) > 1:
                t = next(t for t in self.k.inputs if group in t.fused)
                raise SpecError(
                    f"the sizes of {', '.join(unknown)} cannot be told apart from '{t.name}' alone", t.loc,
                    "give all but one of them a dim of their own in another input",
                )
            if unknown:
                known = " * ".join(a for a in group if a in self.bound)
                known = f"({known})" if " * " in known else known
                t = next(t for t in self.k.inputs if group in t.fused)
                position = t.fused.index(group)
                self.lines.append(f"if {name} % {known}:")
                self.lines.append(
                    f'    raise ValueError(f"{t.name}: dim {position} ({{{name}}}) must be a multiple of {known} ({{{known}}})")'
                )
                self.lines.append(f"{unknown[0]} = {name} // {known}")
                self.bound.append(unknown[0])
        for t in self.k.inputs:
            self.lines.append(f'_check_input("{t.name}", {t.name}, {self.shape(t)}, {JNP_DTYPE[t.dtype]})')
        for t in self.k.inputs:
            if t.fused and any(len(g) > 1 for g in t.fused):
                self.lines.append(f"{t.name} = {t.name}.reshape{self.kernel_shape(t)}  # its fused dims, split")

    def unbound_axes(self) -> list[str]:
        needed = {d for t in self.k.tensors.values() for d in t.dims}
        inputs = {d for t in self.k.inputs for d in t.dims}
        return [a for a in self.k.axes if a in needed and a not in inputs]

    def jagged_maxima(self) -> list[str]:
        return [a.jagged.max for a in self.k.axes.values() if a.jagged]

    def blocked_axes(self) -> list[str]:
        return [a for a in self.plan.grid + self.plan.pipeline_grid if self.plan.axes[a].blocked]

    def cost_dims(self, dims: tuple[str, ...]) -> tuple[str, ...]:
        """Sizes whose product counts a value's elements over all segments.

        A jagged axis's size here is its total over all segments, so its segment axis
        drops out; a second jagged axis of the same segment counts at its maximum,
        which makes the product an upper bound.
        """
        out, seen_segments = [], set()
        for d in dims:
            j = self.k.axes[d].jagged
            if j is None:
                continue
            out.append(d if j.segment not in seen_segments else j.max)
            seen_segments.add(j.segment)
        for d in dims:
            paged = self.k.axes[d].paged
            if paged:  # counted at every sequence's full table width: an upper bound
                width = self.k.tensors[paged.table].dims[1]  # the block table's width: pages per sequence
                out += [width, "page_size"] + ([paged.segment] if paged.segment not in dims else [])
        out += [d for d in dims if not self.k.axes[d].segment and not self.k.axes[d].paged and d not in seen_segments]
        return tuple(sorted(out))

    def cost(self) -> str:
        def table(counts):
            out: dict[tuple[str, ...], int] = {}
            for dims, n in counts.items():
                key = self.cost_dims(dims)
                out[key] = out.get(key, 0) + n
            return out

        bytes_table: dict[tuple[str, ...], int] = {}
        for t in self.k.tensors.values():
            times = int(t.read) + int(t.written) + int(bool(t.scalar))
            key = self.cost_dims(t.dims)
            bytes_table[key] = bytes_table.get(key, 0) + times * ITEMSIZE[t.dtype]
        order = self.axis_order
        return (
            f"pl.CostEstimate(flops={_terms(table(self.k.flops), order)}, "
            f"transcendentals={_terms(table(self.k.transcendentals), order)}, "
            f"bytes_accessed={_terms(bytes_table, order)})"
        )

    def block_sizes(self) -> None:
        p = self.plan
        for a in self.blocked_axes():
            ap = p.axes[a]
            bound = self.k.axes[a].jagged.max if ap.mode == "jagged" else a
            self.lines.append(f'block_{a} = _block_size("block_{a}", block_{a}, {bound}, {ap.alignment})')
        if p.lowering != "pallas_grid":
            for a in self.blocked_axes():
                bound = self.k.axes[a].jagged.max if p.axes[a].mode == "jagged" else a
                self.lines.append(f"num_{a}_tiles = pl.cdiv({bound}, block_{a})")

    def scratch(self) -> list[str]:
        out = []
        for name, lay in self.plan.accumulator_layouts.items():
            dims = ["1" if one else (f"block_{d}" if self.plan.axes[d].blocked else d) for d, one in lay]
            out.append(f"pltpu.VMEM({_tuple(dims)}, {JNP_DTYPE[self.k.accumulators[name].dtype]})")
        return out

    def empty_totals(self) -> None:
        """Jagged axes whose segments are all empty: no kernel, or a stand-in row to point at."""
        k = self.k
        jagged = [a for a in k.axes if k.axes[a].jagged]
        out_axes = [a for a in jagged if all(a in t.dims for t in k.outputs)]
        for a in out_axes:
            empties = ", ".join(f"jnp.zeros({self.shape(t)}, {JNP_DTYPE[t.dtype]})" for t in k.outputs)
            self.lines.append(f"if {a} == 0:  # every segment is empty: nothing to compute")
            self.lines.append(f"    return {empties}")
        for a in jagged:
            if a in out_axes:
                continue
            padded = [t for t in k.inputs if a in t.dims and not t.offsets_of]
            if not padded:
                continue
            self.lines.append(f"if {a} == 0:  # no rows in any segment: the offsets keep every read off this stand-in row")
            for t in padded:
                shape = _tuple(["1" if d == a else d for d in t.dims])
                self.lines.append(f"    {t.name} = jnp.zeros({shape}, {JNP_DTYPE[t.dtype]})")

    def build(self, kernel) -> list[str]:
        p, k = self.plan, self.k
        self.bind_shapes()
        self.bound += self.unbound_axes()
        checks = self.debug_checks()
        if checks:
            self.lines += ["if debug:  # checkify checks: eager calls raise; under jit, wrap in checkify.checkify"]
            self.lines += [f"    {c}" for c in checks]
        if p.lowering != "pallas_grid":
            self.empty_totals()
        self.block_sizes()
        args = [t.name for t in k.scalars] + [op.tensor for op in p.inputs if k.tensors[op.tensor].read]
        for op in p.inputs:
            if op.tensor not in args:  # an output passed in as well (output_only off)
                t = k.tensors[op.tensor]
                self.lines.append(f"{t.name} = jnp.zeros({self.shape(t)}, {JNP_DTYPE[t.dtype]})")
                args.append(t.name)
        if kernel.static_args:
            bindings = ", ".join(f"{s}={s}" for s in kernel.static_args)
            self.lines.append(f"kernel = functools.partial({kernel.name}, {bindings})")
            kernel_name = "kernel"
        else:
            kernel_name = kernel.name
        out_shapes = [f"jax.ShapeDtypeStruct({self.kernel_shape(k.tensors[op.tensor])}, {JNP_DTYPE[k.tensors[op.tensor].dtype]})" for op in p.outputs]
        one = lambda items: items[0] if len(items) == 1 else "[" + ", ".join(items) + "]"  # noqa: E731
        if p.lowering == "paged":
            call = [
                "return pl.pallas_call(",
                f"    {kernel_name},",
                "    grid_spec=pltpu.PrefetchScalarGridSpec(",
                f"        num_scalar_prefetch={len(k.scalars)},",
                f"        grid={_tuple(list(p.grid))},",
                f"        in_specs=[{', '.join(block_spec(p, op) if op.memory == 'blocked' else 'pl.BlockSpec(memory_space=pl.ANY)' for op in p.inputs)}],",
                f"        out_specs={one([block_spec(p, op) for op in p.outputs])},",
                f"        scratch_shapes=[{', '.join(self.scratch() + self.paged_scratch())}],",
                "    ),",
                f"    out_shape={one(out_shapes)},",
            ]
            semantics = [p.axes[a].semantics for a in p.grid]
        elif p.lowering == "pallas_grid":
            grid = _tuple([f"pl.cdiv({a}, block_{a})" if p.axes[a].blocked else a for a in p.grid]) if p.grid else "()"
            in_specs = [block_spec(p, op) for op in p.inputs]
            out_specs = [block_spec(p, op) for op in p.outputs]
            call = [
                "return pl.pallas_call(",
                f"    {kernel_name},",
                f"    grid={grid},",
                f"    in_specs=[{', '.join(in_specs)}],",
                f"    out_specs={one(out_specs)},",
                f"    out_shape={one(out_shapes)},",
            ]
            if k.accumulators:
                call.append(f"    scratch_shapes=[{', '.join(self.scratch())}],")
            semantics = [p.axes[a].semantics for a in p.grid]
        else:
            grid = _tuple(list(p.grid)) if p.grid else "(1,)"
            call = [
                "return pl.pallas_call(",
                f"    {kernel_name},",
                "    grid_spec=pltpu.PrefetchScalarGridSpec(",
                f"        num_scalar_prefetch={len(k.scalars)},",
                f"        grid={grid},",
                f"        in_specs=[{', '.join('pl.BlockSpec(memory_space=pl.ANY)' for _ in p.inputs)}],",
                f"        out_specs={one(['pl.BlockSpec(memory_space=pl.ANY)' for _ in p.outputs])},",
            ]
            if k.accumulators:
                call.append(f"        scratch_shapes=[{', '.join(self.scratch())}],")
            call += ["    ),", f"    out_shape={one(out_shapes)},"]
            # The outer pipeline is one sequential walk; the grid lowering's segments are independent.
            semantics = [p.axes[a].semantics for a in p.grid] or ["arbitrary"]
        if p.aliases:
            offset = len(k.scalars)
            aliases = ", ".join(f"{i + offset}: {o}" for i, o in p.aliases.items())
            call += [
                "    # jax 0.10's TPU interpret mode returns an aliased output at its block-padded",
                "    # shape, so interpret mode runs without the alias, which only saves a copy.",
                f"    input_output_aliases={{}} if interpret else {{{aliases}}},",
            ]
        compiler = f"dimension_semantics=({', '.join(f'{chr(34)}{x}{chr(34)}' for x in semantics)}{',' if len(semantics) == 1 else ''})"
        if p.vmem_limit:
            compiler += f", vmem_limit_bytes={p.vmem_limit}"
        call += [
            f"    compiler_params=pltpu.CompilerParams({compiler}),",
            f"    cost_estimate={self.cost()},",
            "    interpret=_interpret_mode(interpret),",
            f")({', '.join(args)})",
        ]
        fused_outputs = [op for op in p.outputs if any(len(g) > 1 for g in k.tensors[op.tensor].fused)]
        if fused_outputs:  # outputs come back with their fused dims split: join them again
            names = [op.tensor for op in p.outputs]
            call[0] = f"{', '.join(names)}{',' if len(names) == 1 and len(p.outputs) > 1 else ''} = pl.pallas_call("
            joined = [f"{n}.reshape{self.shape(k.tensors[n])}" if op in fused_outputs else n for n, op in zip(names, p.outputs)]
            call.append(f"return {', '.join(joined)}")
        # No backward kernel exists: differentiating raises a clear error instead of failing inside Pallas.
        guarded = f"{', '.join(args)}{',' if len(args) == 1 else ''}"
        call.insert(0, f'{guarded} = _forward_only("{k.name}", {", ".join(args)})')
        return self.lines + call

    def debug_checks(self) -> list[str]:
        """Checks of input values (not shapes) that would otherwise give NaNs or garbage."""
        out = []
        for a in self.k.axes.values():
            if a.jagged:
                out.append(f'_check_offsets("{a.jagged.offsets}", {a.jagged.offsets}, {a.name}, "{a.jagged.max}", {a.jagged.max})')
            if a.paged:
                out.append(f'_check_pages("{a.paged.lengths}", {a.paged.lengths}, "{a.paged.table}", {a.paged.table}, num_pages, page_size)')
        return out

    def debug_doc(self) -> str:
        what = []
        for a in self.k.axes.values():
            if a.jagged:
                what.append(
                    f"{a.jagged.offsets} starts at 0, never decreases and ends at the row count, "
                    f"and no segment is longer than {a.jagged.max}"
                )
            if a.paged:
                what.append(
                    f"every {a.paged.lengths} fits its row of {a.paged.table}, and every page id it uses "
                    "names a page"
                )
        return (
            f"debug: True to check that {'; '.join(what)} (wrong values give NaNs or garbage, not errors). "
            "Eager calls raise at once; under jax.jit, pass debug=True statically and wrap the "
            "function in jax.experimental.checkify.checkify, then call .throw() on the error it returns."
        )

    def paged_scratch(self) -> list[str]:
        p, k = self.plan, self.k
        out = []
        paged = [op for op in p.inputs if op.memory == "paged"]
        for op in paged:
            t = k.tensors[op.tensor]
            axis = next(d for d in t.dims if p.axes[d].mode == "paged")
            rows = ["pages_per_compute_block * page_size"] + list(t.dims[t.dims.index(axis) + 1:])
            out.append(f"pltpu.VMEM({_tuple([str(p.paged_slots)] + rows)}, {JNP_DTYPE[t.dtype]})")
        sems = "pltpu.SemaphoreType.DMA((2,))" if p.paged_prefetch and p.semaphore_per_slot else "pltpu.SemaphoreType.DMA(())"
        out += [sems for _ in paged]
        if p.paged_prefetch:
            out += ["pltpu.SMEM((1,), jnp.int32)", "pltpu.SMEM((1,), jnp.int32)"]
        return out

    def signature(self) -> str:
        parts = [t.name for t in self.k.inputs]
        keywords = self.unbound_axes() + self.jagged_maxima()
        keywords += [f"block_{a}={self.plan.axes[a].block}" for a in self.blocked_axes()]
        keywords += [f"pages_per_compute_block={a.block}" for a in self.plan.axes.values() if a.mode == "paged"]
        if self.debug_checks():
            keywords.append("debug=False")
        keywords.append("interpret=False")
        return ", ".join(parts + ["*"] + keywords)

    def doc(self) -> str:
        k = self.k
        summary = k.doc.split("\n\n")[0].replace("\n", " ").strip() or f"Runs the {k.name} kernel."
        lines = textwrap.wrap(summary, 88) + ["", "Args:"]
        for t in k.inputs:
            note = ""
            if t.offsets_of:
                note = f" Row offsets of the segments along {t.offsets_of}; the last is the total."
            jagged = [d for d in t.dims if k.axes[d].jagged]
            if jagged and not t.offsets_of:
                note = f" {', '.join(jagged)}: the rows of all segments, one after another."
            shown = ", ".join(self.caller_dims(t)).replace(" * ", "*").replace(" + ", "+")
            lines.append(f"  {t.name}: {t.dtype}[{shown}].{note}")
        for a in self.unbound_axes():
            lines.append(f"  {a}: extent of axis {a}.")
        for a in k.axes.values():
            if a.jagged:
                lines.append(f"  {a.jagged.max}: the largest extent of {a.name} in any segment (it sizes the grid).")
        for a in self.blocked_axes():
            lines.append(f"  block_{a}: tile size along {a}.")
        for a in self.plan.axes.values():
            if a.mode == "paged":
                lines.append(f"  pages_per_compute_block: pages of {a.name} per block of the in-kernel loop.")
        if self.debug_checks():
            lines += textwrap.wrap(self.debug_doc(), 86, initial_indent="  ", subsequent_indent="    ")
        lines.append("  interpret: True to run in TPU interpret mode (on CPU), or a pltpu.InterpretParams.")
        lines += ["", "Returns:"]
        for t in k.outputs:
            shown = ", ".join(self.caller_dims(t)).replace(" * ", "*")
            lines.append(f"  {t.name}: {t.dtype}[{shown}].")
        lines += [
            "",
            "Forward only: there is no backward kernel, so jax.grad (or any differentiation) through",
            "this function raises NotImplementedError.",
        ]
        return docstring("\n".join(lines), "    ")


def build_options(chip: str, overrides: dict[str, object]) -> str:
    parts = [f"--chip {chip}"]
    for name in sorted(overrides):
        value = overrides[name]
        text = str(value).lower() if isinstance(value, bool) else (literal(value) if isinstance(value, (int, float)) else value)
        parts.append(f"-D {name}={text}")
    return " ".join(parts)


def render(plan: Plan, spec_path: str, rebuild_command: str | None = None) -> str:
    k = plan.ir
    kernel = print_kernel(plan)
    entry = _Entry(plan)
    entry_lines = entry.build(kernel)
    uses = set(kernel.uses)
    stdlib = []
    if kernel.static_args:
        stdlib.append("import functools")
    if "math" in uses:
        stdlib.append("import math")
    # In isort's order (plain imports, then from-imports), so that linters accept the file.
    imports = stdlib + ([""] if stdlib else []) + ["import jax", "import jax.numpy as jnp"]
    if "lax" in uses or "mask_tail" in uses or "gelu" in uses:
        imports.append("from jax import lax")
    if entry.debug_checks():
        imports.append("from jax.experimental import checkify")
    imports += [
        "from jax.experimental import pallas as pl",
        "from jax.experimental.pallas import tpu as pltpu",
    ]
    used_params = sorted({v.name for st in k.statements for v in ir.walk(st.value) if isinstance(v, ir.ParamRef)}, key=list(k.params).index)
    constants = [(param_constant(n), literal(k.params[n])) for n in used_params]
    # Long lines are wrapped; the author's own line breaks stay.
    module_doc = "\n".join(textwrap.fill(line, 88) or line for line in k.doc.split("\n")) or f"The {k.name} kernel."
    template = _environment().get_template("module.py.j2")
    return template.render(
        version=__version__,
        spec_path=spec_path,
        spec_sha256=k.spec.sha256,
        build_options=build_options(plan.chip.name, k.spec.overrides),
        rebuild_command=rebuild_command or f"codegen build {spec_path}",
        docstring=docstring(module_doc),
        imports=imports,
        constants=constants,
        helpers=uses,
        activations=[a for a in ir.ACTIVATIONS if a in uses],
        pipeline=plan.lowering != "pallas_grid",
        # E741 flags l, O and I; spec names are kept as they are, so the file says why it allows them.
        ambiguous_names=sorted({n for n in (*k.tensors, *k.accumulators, *(st.name for st in k.statements)) if n in ("l", "O", "I")}),
        debug_helpers=sorted({c.split("(")[0].lstrip("_") for c in entry.debug_checks()}),
        block_axes=entry.blocked_axes(),
        kernel=kernel,
        name=k.name,
        signature=entry.signature(),
        entry_doc=entry.doc(),
        entry_lines=entry_lines,
    )

