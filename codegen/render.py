"""Render a plan into module source: the Jinja skeleton plus printed kernel code."""

from __future__ import annotations

import textwrap
from pathlib import Path

import jinja2

from codegen import __version__, ir
from codegen.chips import ITEMSIZE
from codegen.plan import Plan
from codegen.printer import JNP_DTYPE, literal, param_constant, print_kernel

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


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


def _terms(table: dict[tuple[str, ...], int], axis_order: list[str]) -> str:
    """A sum of products of axis sizes, e.g. `2 * b * m * n * k + b * m * n`."""
    if not table:
        return "0"
    ordered = sorted(table.items(), key=lambda kv: (-len(kv[0]), [axis_order.index(a) for a in kv[0]]))
    parts = []
    for dims, coef in ordered:
        dims = sorted(dims, key=axis_order.index)
        factors = ([str(coef)] if coef != 1 or not dims else []) + list(dims)
        parts.append(" * ".join(factors))
    return " + ".join(parts)


class _Entry:
    def __init__(self, plan: Plan):
        self.plan = plan
        self.k = plan.ir
        self.axis_order = list(self.k.axes)
        self.bound: list[str] = []
        self.lines: list[str] = []

    def block_dim(self, axis: str) -> str:
        mode = self.plan.axes[axis].mode
        return "None" if mode == "squeezed" else (f"block_{axis}" if mode == "tiled" else axis)

    def block_spec(self, op) -> str:
        if op.memory == "any":
            return "pl.BlockSpec(memory_space=pl.ANY)"
        t = self.k.tensors[op.tensor]
        shape = _tuple([self.block_dim(d) for d in t.dims])
        params = ", ".join(f"{a}_index" for a in self.plan.grid)
        index = _tuple([f"{d}_index" if self.plan.axes[d].mode != "full" else "0" for d in t.dims])
        extra = ", pipeline_mode=pl.Buffered(1)" if op.buffers == 1 else ""
        return f"pl.BlockSpec({shape}, lambda {params}: {index}{extra})"

    def shape(self, dims) -> str:
        return _tuple(list(dims))

    def bind_shapes(self) -> None:
        for t in self.k.inputs:
            new = [d for d in t.dims if d not in self.bound]
            if len(new) == len(t.dims):
                lhs = ", ".join(t.dims) + ("," if len(t.dims) == 1 else "")
                self.lines.append(f"{lhs} = {t.name}.shape")
            else:
                for d in new:
                    self.lines.append(f"{d} = {t.name}.shape[{t.dims.index(d)}]")
            self.bound += new
        for t in self.k.inputs:
            self.lines.append(f'_check_input("{t.name}", {t.name}, {self.shape(t.dims)}, {JNP_DTYPE[t.dtype]})')

    def unbound_axes(self) -> list[str]:
        needed = {d for t in self.k.tensors.values() for d in t.dims}
        inputs = {d for t in self.k.inputs for d in t.dims}
        return [a for a in self.k.axes if a in needed and a not in inputs]

    def cost(self) -> str:
        bytes_table: dict[tuple[str, ...], int] = {}
        for t in self.k.tensors.values():
            times = int(t.read) + int(t.written)
            key = tuple(sorted(t.dims))
            bytes_table[key] = bytes_table.get(key, 0) + times * ITEMSIZE[t.dtype]
        return (
            f"pl.CostEstimate(flops={_terms(self.k.flops, self.axis_order)}, "
            f"transcendentals={_terms(self.k.transcendentals, self.axis_order)}, "
            f"bytes_accessed={_terms(bytes_table, self.axis_order)})"
        )

    def build(self, kernel) -> list[str]:
        p, k = self.plan, self.k
        self.bind_shapes()
        self.bound += self.unbound_axes()
        for a in p.grid:
            ap = p.axes[a]
            if ap.mode == "tiled":
                self.lines.append(f'block_{a} = _block_size("block_{a}", block_{a}, {a}, {ap.alignment})')
        args = [t.name for t in k.inputs]
        for op in p.inputs:
            if op.tensor not in args:  # an output passed in as well (output_only off)
                t = k.tensors[op.tensor]
                self.lines.append(f"{t.name} = jnp.zeros({self.shape(t.dims)}, {JNP_DTYPE[t.dtype]})")
                args.append(t.name)
        if kernel.static_args:
            bindings = ", ".join(f"{s}={s}" for s in kernel.static_args)
            self.lines.append(f"kernel = functools.partial({kernel.name}, {bindings})")
            kernel_name = "kernel"
        else:
            kernel_name = kernel.name
        grid = _tuple([f"pl.cdiv({a}, block_{a})" if p.axes[a].mode == "tiled" else a for a in p.grid]) if p.grid else "()"
        in_specs = "[" + ", ".join(self.block_spec(op) for op in p.inputs) + "]"
        out_specs = [self.block_spec(op) for op in p.outputs]
        out_shapes = [
            f"jax.ShapeDtypeStruct({self.shape(k.tensors[op.tensor].dims)}, {JNP_DTYPE[k.tensors[op.tensor].dtype]})"
            for op in p.outputs
        ]
        semantics = ", ".join(f'"{p.axes[a].semantics}"' for a in p.grid) + ("," if len(p.grid) == 1 else "")
        compiler = f"dimension_semantics=({semantics})"
        if p.vmem_limit:
            compiler += f", vmem_limit_bytes={p.vmem_limit}"
        call = [
            "return pl.pallas_call(",
            f"    {kernel_name},",
            f"    grid={grid},",
            f"    in_specs={in_specs},",
            f"    out_specs={out_specs[0] if len(out_specs) == 1 else '[' + ', '.join(out_specs) + ']'},",
            f"    out_shape={out_shapes[0] if len(out_shapes) == 1 else '[' + ', '.join(out_shapes) + ']'},",
        ]
        if k.accumulators:
            scratch = []
            for name, lay in p.accumulator_layouts.items():
                dims = ["1" if one else self.block_dim(d) for d, one in lay]
                scratch.append(f"pltpu.VMEM({_tuple(dims)}, {JNP_DTYPE[k.accumulators[name].dtype]})")
            call.append(f"    scratch_shapes=[{', '.join(scratch)}],")
        if p.aliases:
            aliases = ", ".join(f"{i}: {o}" for i, o in p.aliases.items())
            call += [
                "    # jax 0.10's TPU interpret mode returns an aliased output at its block-padded",
                "    # shape, so interpret mode runs without the alias, which only saves a copy.",
                f"    input_output_aliases={{}} if interpret else {{{aliases}}},",
            ]
        call += [
            f"    compiler_params=pltpu.CompilerParams({compiler}),",
            f"    cost_estimate={self.cost()},",
            "    interpret=_interpret_mode(interpret),",
            f")({', '.join(args)})",
        ]
        return self.lines + call

    def signature(self) -> str:
        parts = [t.name for t in self.k.inputs]
        keywords = [f"{a}" for a in self.unbound_axes()]
        keywords += [f"block_{a}={self.plan.axes[a].block}" for a in self.plan.grid if self.plan.axes[a].mode == "tiled"]
        keywords.append("interpret=False")
        return ", ".join(parts + ["*"] + keywords)

    def doc(self) -> str:
        k = self.k
        summary = k.doc.split("\n\n")[0].replace("\n", " ").strip() or f"Runs the {k.name} kernel."
        lines = textwrap.wrap(summary, 88) + ["", "Args:"]
        for t in k.inputs:
            lines.append(f"  {t.name}: {t.dtype}[{', '.join(t.dims)}].")
        for a in self.unbound_axes():
            lines.append(f"  {a}: extent of axis {a}.")
        for a in self.plan.grid:
            if self.plan.axes[a].mode == "tiled":
                lines.append(f"  block_{a}: tile size along {a}.")
        lines.append("  interpret: True to run in TPU interpret mode (on CPU), or a pltpu.InterpretParams.")
        lines += ["", "Returns:"]
        for t in k.outputs:
            lines.append(f"  {t.name}: {t.dtype}[{', '.join(t.dims)}].")
        return docstring("\n".join(lines), "    ")


def build_options(chip: str, overrides: dict[str, object]) -> str:
    parts = [f"--chip {chip}"]
    for name in sorted(overrides):
        value = overrides[name]
        text = str(value).lower() if isinstance(value, bool) else (literal(value) if isinstance(value, (int, float)) else value)
        parts.append(f"-D {name}={text}")
    return " ".join(parts)


def render(plan: Plan, spec_path: str) -> str:
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
    imports = stdlib + ([""] if stdlib else []) + ["import jax"]
    if "lax" in uses or "mask_tail" in uses:
        imports.append("from jax import lax")
    imports += [
        "import jax.numpy as jnp",
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
        docstring=docstring(module_doc),
        imports=imports,
        constants=constants,
        helpers=uses,
        block_axes=[a for a in plan.grid if plan.axes[a].mode == "tiled"],
        kernel=kernel,
        name=k.name,
        signature=entry.signature(),
        entry_doc=entry.doc(),
        entry_lines=entry_lines,
    )

