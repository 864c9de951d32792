"""Render a plan into module source: the Jinja skeleton plus printed kernel code."""

from __future__ import annotations

import math
import shlex
import textwrap
from pathlib import Path

import jinja2

from codegen import __version__, ir
from codegen.chips import ITEMSIZE
from codegen.errors import SpecError
from codegen.plan import Plan
from codegen.printer import JNP_DTYPE, literal, param_constant, print_kernel

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


class Entry:
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
        """The shape of `t` as the kernel takes it: fused dims split, a unit dim where planned."""
        return _tuple(self.plan.kernel_dims(t.name))

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
            elif t.name in self.plan.unit_major:
                why = "its jagged rows" if self.plan.axes[t.dims[-2]].mode == "jagged" else f"each '{t.dims[-2]}' row"
                self.lines.append(f"{t.name} = {t.name}.reshape{self.kernel_shape(t)}  # {why} as a major dim")

    def whole_axes_with_max(self) -> list[str]:
        """Axes held whole in each block whose `max` the VMEM budget was sized by: a call
        beyond it is refused, not left to fail (or spill) in the compiler."""
        return [a for a, axis in self.k.axes.items()
                if axis.max is not None and a in self.bound and self.plan.axes[a].mode == "full"]

    def unbound_axes(self) -> list[str]:
        needed = {d for t in self.k.tensors.values() for d in t.dims}
        inputs = {d for t in self.k.inputs for d in t.dims}
        return [a for a in self.k.axes if a in needed and a not in inputs]

    def jagged_maxima(self) -> list[str]:
        """The keywords bounding jagged axes, each once: axes may share one."""
        return ir.runtime_scalars(self.k.spec)

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

    def cost(self) -> list[str]:
        """The cost estimate, as named terms: each a sum of products of sizes."""

        def table(counts):
            out: dict[tuple[str, ...], int] = {}
            for dims, n in counts.items():
                key = self.cost_dims(dims)
                out[key] = out.get(key, 0) + n
            return out

        bytes_table: dict[tuple[str, ...], int] = {}
        for t in self.k.tensors.values():
            reads = self.k.passes if self.k.passes > 1 and self.k.ordered_axis in t.dims else 1
            times = reads * int(t.read) + int(t.written) + int(bool(t.scalar))
            key = self.cost_dims(t.dims)
            bytes_table[key] = bytes_table.get(key, 0) + times * ITEMSIZE[t.dtype]
        order = self.axis_order
        return [
            "# the work and traffic of the whole call, for XLA's scheduler",
            f"flops = {_terms(table(self.k.flops), order)}",
            f"transcendentals = {_terms(table(self.k.transcendentals), order)}",
            f"# inputs along '{self.k.ordered_axis}' read in each of its {self.k.passes} passes, every output written once"
            if self.k.passes > 1 else "# every input read once and every output written once",
            f"bytes_accessed = {_terms(bytes_table, order)}",
            "cost = pl.CostEstimate(flops=flops, transcendentals=transcendentals, bytes_accessed=bytes_accessed)",
        ]

    def block_bound(self, a: str) -> str:
        """What a block along `a` may not exceed: a jagged axis's max, else the axis's size.
        A max of 0 (every segment empty) counts as 1: each segment still takes a tile,
        which writes its outputs."""
        return f"max({self.k.axes[a].jagged.max}, 1)" if self.plan.axes[a].mode == "jagged" else a

    def block_sizes(self) -> None:
        for a in self.blocked_axes():
            ap = self.plan.axes[a]
            if ap.whole:  # the plan keeps each segment in one tile
                bound = self.k.axes[a].jagged.max
                self.lines.append(f"if {bound} > block_{a}:")
                self.lines.append(
                    f'    raise ValueError(f"{bound}={{{bound}}}: each segment of {a} is held whole in one tile, '
                    f'so it must be at most block_{a}={{block_{a}}}")'
                )
            bound = self.block_bound(a)
            if ap.mode == "jagged" and ap.alignment > 1:  # a pl.BoundedSlice block stays aligned
                bound = f"pl.cdiv({bound}, {ap.alignment}) * {ap.alignment}"
            self.lines.append(f'block_{a} = _block_size("block_{a}", block_{a}, {bound}, {ap.alignment})')

    @staticmethod
    def dtype(t: ir.TensorInfo) -> str:
        return JNP_DTYPE[t.dtype]

    def out_shapes(self) -> list[str]:
        k, out = self.k, []
        for op in self.plan.outputs:
            dims = self.plan.kernel_dims(op.tensor)
            for position, tile in self.plan.tile_padded_outputs.get(op.tensor, []):
                dims[position] = f"_tile_padded({dims[position]}, {tile}, interpret)"
                self.uses_tile_padded = True
            out.append(f"jax.ShapeDtypeStruct({_tuple(dims)}, {self.dtype(k.tensors[op.tensor])})")
        return out

    uses_tile_padded = False
    uses_visited_tiles = False  # real_tiles_only's maps are built by a module helper

    def accumulator_scratch(self) -> list[tuple[str, str]]:
        """Scratch entries of the accumulators, each with the kernel ref it becomes."""
        out = []
        for name, lay in self.plan.accumulator_layouts.items():
            dims = ["1" if one else (f"block_{d}" if self.plan.axes[d].blocked else d) for d, one in lay]
            out.append((f"pltpu.VMEM({_tuple(dims)}, {JNP_DTYPE[self.k.accumulators[name].dtype]})", f"{name}_ref"))
        return out

    def build(self, kernel) -> list[str]:
        p, k = self.plan, self.k
        self.bind_shapes()
        self.bound += self.unbound_axes()
        self.lines += [f'_check_max("{a}", {a}, {self.k.axes[a].max})' for a in self.whole_axes_with_max()]
        checks = self.debug_checks()
        if checks:
            self.lines += ["if debug:  # checkify checks: eager calls raise; under jit, wrap in checkify.checkify"]
            self.lines += [f"    {c}" for c in checks]
        self.block_sizes()
        p.unit.entry_prelude(self)
        for name, padded in p.tile_padded_inputs.items():
            widths = ["(0, 0)"] * len(p.kernel_dims(name))
            for position, tile in padded:
                widths[position] = f"(0, -{name}.shape[{position}] % {tile})"
            self.lines.append(
                "# a bounded block's last DMA reads to its tile's edge: a TPU's tiled HBM layout holds that padding, "
                "the interpreter's arrays do not"
            )
            self.lines.append("if interpret is not False:")
            self.lines.append(f"    {name} = jnp.pad({name}, {_tuple(widths)})")
        args = p.prefetched + [op.tensor for op in p.inputs if k.tensors[op.tensor].read]
        for op in p.inputs:
            if op.tensor not in args:  # an output passed in as well (output_only off)
                t = k.tensors[op.tensor]
                self.lines.append(f"{t.name} = jnp.zeros({self.shape(t)}, {JNP_DTYPE[t.dtype]})")
                args.append(t.name)
        self.call_args = args
        if kernel.static_args:
            bindings = ", ".join(f"{s}={s}" for s in kernel.static_args)
            self.lines.append(f"kernel = functools.partial({kernel.name}, {bindings})")
            kernel_name = "kernel"
        else:
            kernel_name = kernel.name
        self.lines += self.cost()
        call = p.unit.pallas_call(self, kernel_name)
        fused_outputs = [
            op for op in p.outputs
            if any(len(g) > 1 for g in k.tensors[op.tensor].fused) or op.tensor in p.unit_major
        ]
        padded = [op for op in p.outputs if op.tensor in p.tile_padded_outputs]
        if fused_outputs or padded:  # outputs come back in the kernel's shape: the caller's again
            names = [op.tensor for op in p.outputs]
            at = next(i for i, line in enumerate(call) if line == "return pl.pallas_call(")
            call[at] = f"{', '.join(names)}{',' if len(names) == 1 and len(p.outputs) > 1 else ''} = pl.pallas_call("
            joined = []
            for n, op in zip(names, p.outputs):
                text = n
                if op in padded:  # interpret mode's whole tiles, cut back to the array
                    dims = p.kernel_dims(n)
                    cut = [f":{dims[i]}" if any(i == pos for pos, _ in p.tile_padded_outputs[n]) else ":" for i in range(len(dims))]
                    text += f"[{', '.join(cut)}]"
                if op in fused_outputs:
                    text += f".reshape{self.shape(k.tensors[n])}"
                joined.append(text)
            call.append(f"return {', '.join(joined)}")
        if p.needs_tpu_facts:  # the kernel is traced for the TPU that _target_tpu names
            call = ["with _target_tpu(interpret):"] + [f"    {line}" for line in call]
        # No backward kernel exists: differentiating raises a clear error instead of failing inside Pallas.
        if args:  # a kernel of positions alone takes no array to differentiate
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

    def signature(self) -> str:
        parts = [t.name for t in self.k.inputs]
        keywords = self.unbound_axes() + self.jagged_maxima()
        keywords += [f"block_{a}={self.plan.default_block(a)}" for a in self.blocked_axes()]
        keywords += [kw for kw, _ in self.plan.unit.signature_keywords(self.plan)]
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
        for name in self.jagged_maxima():
            bounded = ", ".join(a.name for a in k.axes.values() if a.jagged and a.jagged.max == name)
            lines.append(f"  {name}: the largest extent of {bounded} in any segment (it sizes the grid).")
        for a in self.blocked_axes():
            lines.append(f"  block_{a}: tile size along {a}.")
        lines += [f"  {doc}" for _, doc in self.plan.unit.signature_keywords(self.plan)]
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


def tuned_line(plan: Plan) -> str:
    """What the spec's tune entry for the chip decided, where it applies: the defaults of the
    block keywords and the rules it switched."""
    entry = plan.ir.spec.tune.get(plan.chip.name)
    if entry is None:
        return ""
    shapes = ", ".join(f"{a}={n}" for a, n in entry.shapes.items())
    line = f"tune.{plan.chip.name} (by codegen tune at {shapes}): default blocks " + ", ".join(
        f"{a}={n}" for a, n in entry.blocks.items())
    if entry.rules:
        line += "; rules " + ", ".join(f"{name} {'on' if s.enabled else 'off'}" for name, s in entry.rules.items())
    return line


def build_options(chip: str, overrides: dict[str, object]) -> str:
    """The build's options as a command line takes them: each -D value as -D reads it
    back (infinity is `.inf` there, while the module's Python spells it `jnp.inf`)."""
    def value(v) -> str:
        if isinstance(v, float) and math.isinf(v):
            return ".inf" if v > 0 else "-.inf"
        return str(v).lower() if isinstance(v, bool) else repr(v) if isinstance(v, float) else shlex.quote(str(v))

    return " ".join([f"--chip {chip}"] + [f"-D {name}={value(overrides[name])}" for name in sorted(overrides)])


def render(plan: Plan, spec_path: str, rebuild_command: str | None = None) -> str:
    k = plan.ir
    kernel = print_kernel(plan)
    entry = Entry(plan)
    entry_lines = entry.build(kernel)
    uses = set(kernel.uses)
    stdlib = ["import contextlib"] if plan.needs_tpu_facts else []
    if "bounded_tile" in uses:
        stdlib.append("import dataclasses")
    if kernel.static_args:
        stdlib.append("import functools")
    if "math" in uses:
        stdlib.append("import math")
    # In isort's order (plain imports, then from-imports), so that linters accept the file.
    imports = stdlib + ([""] if stdlib else []) + ["import jax", "import jax.numpy as jnp"]
    if "lax" in uses or "mask_tail" in uses or "mask_outside" in uses or "gelu" in uses:
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
        tuned=tuned_line(plan),
        rebuild_command=rebuild_command or f"codegen build {spec_path}",
        docstring=docstring(module_doc),
        imports=imports,
        constants=constants,
        helpers=uses | ({"tile_padded"} if entry.uses_tile_padded else set()) | ({"visited_tiles"} if entry.uses_visited_tiles else set())
        | ({"check_max"} if entry.whole_axes_with_max() else set()),
        activations=[a for a in ir.ACTIVATIONS if a in uses],
        pipeline=plan.needs_tpu_facts,
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

