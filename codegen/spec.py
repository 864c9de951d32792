"""Load and validate a kernel spec into typed, located dataclasses.

The accepted shape of a spec is declared once, in `SCHEMA`; validation and
`codegen schema` (JSON Schema for editors) both read it.
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import keyword
import re
from dataclasses import dataclass, field
from pathlib import Path

from codegen import names
from codegen.chips import CHIPS
from codegen.errors import Location, SpecError, TextStart, did_you_mean
from codegen.source import Node, load_yaml

# Anchored for JSON Schema (ECMA-262, where `$` is the end of the text); Python
# code matches them with fullmatch, since Python's `$` also matches before a
# final newline.
IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]*$")
# AXIS; AXIS+1 for an offsets tensor; A*B for two axes stored as one dim (A major).
DIM = re.compile(r"^[a-z][a-z0-9_]*((\+1)|(\*[a-z][a-z0-9_]*)+)?$")
DTYPES = ("float32", "bfloat16", "int32", "int16", "int8")
# Characters that reorder how text is displayed: in a docstring they could show a
# reader other code than what runs ("Trojan Source", CVE-2021-42574).
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Dtypes numpy knows that a TPU kernel cannot hold in vectors, with what to use instead.
UNSUPPORTED_DTYPES = {
    "float16": "Mosaic cannot load float16 vectors on v5e, v6e or v7x: use bfloat16, or float32",
}


def dtype_hint(name: str) -> str:
    """What to write instead of the dtype `name`, which is not one of DTYPES."""
    return UNSUPPORTED_DTYPES.get(name) or did_you_mean(name, DTYPES) or f"one of: {', '.join(DTYPES)}"
# Names the generated module itself uses (codegen.names); a spec name must not shadow a
# builtin either (tuple, sum, range...).
RESERVED = names.RESERVED | frozenset(dir(builtins))


# --- the schema -------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    kind: str  # "identifier", "string", "int", "number", "scalar", "dtype", "bool", "axis_list", "enum", "mapping"
    doc: str
    required: bool = False
    choices: tuple[str, ...] = ()  # for "enum"
    fields: dict | None = None  # for "mapping"


@dataclass(frozen=True)
class Section:
    """A mapping from user-chosen names to entries of one shape."""

    doc: str
    entry: dict[str, Field] | Field


JAGGED_FIELDS = {
    "offsets": Field("identifier", "Tensor [SEGMENT+1] of int32 row offsets, scalar-prefetched.", True),
    "segment": Field("identifier", "The axis that numbers the segments.", True),
    "max": Field("identifier", "Entry-point keyword giving the largest segment extent.", True),
}
PAGED_FIELDS = {
    "table": Field("identifier", "Tensor [SEGMENT, PAGES] of int32 page ids, scalar-prefetched.", True),
    "lengths": Field("identifier", "Tensor [SEGMENT] of int32 extents, scalar-prefetched.", True),
    "segment": Field("identifier", "The axis that numbers the sequences.", True),
    "page_size": Field("int", "Rows per page expected; sizes the VMEM estimate only (default 16)."),
}
AXIS_FIELDS = {
    "block": Field("int", "Tile size along this axis (for a paged axis: pages per compute block)."),
    "max": Field("int", "Largest extent expected; sizes the VMEM estimate of full-extent axes, and a call beyond it is refused."),
    "jagged": Field("mapping", "Per-segment extent from an offsets tensor.", fields=JAGGED_FIELDS),
    "paged": Field(
        "mapping",
        "Positions stored in pages: position t of segment s lives at "
        "[TABLE[s, t // page_size], t % page_size], bounded by LENGTHS[s].",
        fields=PAGED_FIELDS,
    ),
}
TUNE_FIELDS = {
    "shapes": Field("sizes", "The sizes (axis or jagged max: N) the blocks were tuned at.", True),
    "blocks": Field("sizes", "Block size per blocked axis (for a paged axis: pages per compute block).", True),
    "estimated_cycles": Field("int", "The compiler's estimate for the winner at those shapes."),
    "compiler": Field("string", "The compiler that made the estimate, e.g. libtpu 0.0.42.1."),
    "rules": Field("switches", "Rules `codegen tune` switched for this chip (rule: on/off); they take the place "
                   "of the spec's own `rules:` switch in a build for the chip."),
}
LOWERINGS = ("outer_pipeline", "grid")
TENSOR_FIELDS = {
    "dims": Field("axis_list", "Axis names, major to minor.", required=True),
    "dtype": Field("dtype", "Element type.", required=True),
}
ACCUMULATOR_FIELDS = {
    "over": Field("identifier", "The ordered axis this state is carried across.", required=True),
    "dims": Field("axis_list", "Axes the state varies over.", required=True),
    "init": Field("number", "Initial value (-.inf and .inf allowed).", required=True),
    "dtype": Field("dtype", "Element type of the state (default float32)."),
}
SCHEMA: dict[str, Field | Section] = {
    "name": Field("identifier", "Kernel name: the entry point and the output file name.", True),
    "doc": Field("string", "One paragraph describing the kernel; becomes the docstring."),
    "lowering": Field(
        "enum",
        "For jagged kernels: one emit_pipeline over segments x tiles, or a grid over segments.",
        choices=LOWERINGS,
    ),
    "params": Section("Build-time constants, overridable with -D NAME=VALUE.", Field("scalar", "")),
    "axes": Section("Named dimensions; sizes come from input shapes.", AXIS_FIELDS),
    "tensors": Section("Kernel operands in entry-point order.", TENSOR_FIELDS),
    "accumulators": Section("State carried across an ordered axis.", ACCUMULATOR_FIELDS),
    "compute": Section(
        "Statements in order: NAME: expression. A tensor name as NAME writes that tensor.",
        Field("string", ""),
    ),
    "rules": Section("Planner rules switched on or off by name.", Field("bool", "")),
    "tune": Section(
        "Per chip (v5e, v6e, v7x): the block sizes `codegen tune` chose; the build for that chip "
        "makes them the entry point's defaults.",
        TUNE_FIELDS,
    ),
}
REQUIRED_SECTIONS = ("axes", "tensors", "compute")


def json_schema() -> dict:
    """The spec's JSON Schema, derived from `SCHEMA`.

    Rule and activation names are enumerated from the planner and the IR, so the
    schema cannot drift from what a build accepts.
    """
    from codegen.ir import ACTIVATIONS
    from codegen.rules import RULE_NAMES

    def field_schema(f: Field) -> dict:
        base = {
            "identifier": {"type": "string", "pattern": IDENTIFIER.pattern},
            "string": {"type": "string"},
            "int": {"type": "integer", "minimum": 1},
            "number": {"type": "number"},
            "scalar": {"type": ["number", "boolean", "string"]},
            "dtype": {"enum": list(DTYPES)},
            "bool": {"type": "boolean"},
            "axis_list": {"type": "array", "items": {"type": "string", "pattern": DIM.pattern}},
            "enum": {"enum": list(f.choices)},
            "mapping": entry_schema(f.fields) if f.fields else {},
            "sizes": {"type": "object", "propertyNames": {"pattern": IDENTIFIER.pattern},
                      "additionalProperties": {"type": "integer", "minimum": 1}},
            "switches": {"type": "object", "propertyNames": {"enum": list(RULE_NAMES)},
                         "additionalProperties": {"type": "boolean"}},
        }[f.kind]
        return {**base, "description": f.doc} if f.doc else base

    def entry_schema(entry) -> dict:
        if isinstance(entry, Field):
            return field_schema(entry)
        return {
            "type": "object",
            "additionalProperties": False,
            "properties": {k: field_schema(f) for k, f in entry.items()},
            "required": [k for k, f in entry.items() if f.required],
        }

    properties = {}
    names = {
        # a param holds a number, a switch, or an activation's name
        "params": {"anyOf": [{"type": ["number", "boolean"]}, {"enum": list(ACTIVATIONS)}]},
    }
    for key, item in SCHEMA.items():
        if isinstance(item, Field):
            properties[key] = field_schema(item)
        else:
            properties[key] = {
                "type": "object",
                "description": item.doc,
                "propertyNames": {"pattern": IDENTIFIER.pattern},
                "additionalProperties": names.get(key, entry_schema(item.entry)),
            }
    properties["rules"]["propertyNames"] = {"enum": list(RULE_NAMES)}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "tpu-codegen kernel spec",
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        "required": ["name", *REQUIRED_SECTIONS],
    }


# --- the typed spec ---------------------------------------------------------

@dataclass(frozen=True)
class Param:
    name: str
    value: float | int | bool | str
    loc: Location


@dataclass(frozen=True)
class Jagged:
    offsets: str
    segment: str
    max: str  # the entry point's keyword for the largest extent
    loc: Location


@dataclass(frozen=True)
class Paged:
    table: str
    lengths: str
    segment: str
    page_size: int  # for the VMEM estimate
    loc: Location


@dataclass(frozen=True)
class Axis:
    name: str
    block: int | None
    max: int | None
    loc: Location
    block_loc: Location | None = None
    jagged: Jagged | None = None
    paged: Paged | None = None
    max_loc: Location | None = None

    @property
    def segment(self) -> str | None:
        """The axis numbering the segments that this axis's extent depends on."""
        if self.jagged:
            return self.jagged.segment
        return self.paged.segment if self.paged else None


@dataclass(frozen=True)
class Dim:
    axis: str
    loc: Location
    plus_one: bool = False  # AXIS+1: the length of an offsets tensor
    fused_with_next: bool = False  # A*B: this axis and the next are stored as one dim


@dataclass(frozen=True)
class Tensor:
    name: str
    dims: tuple[Dim, ...]
    dtype: str
    loc: Location

    @property
    def axes(self) -> tuple[str, ...]:
        return tuple(d.axis for d in self.dims)

    @property
    def fused(self) -> tuple[tuple[str, ...], ...]:
        """The dims as the caller's array stores them: groups of axes fused into one dim."""
        groups, current = [], []
        for d in self.dims:
            current.append(d.axis)
            if not d.fused_with_next:
                groups.append(tuple(current))
                current = []
        return tuple(groups)


@dataclass(frozen=True)
class Accumulator:
    name: str
    over: str
    over_loc: Location
    dims: tuple[Dim, ...]
    init: float
    dtype: str
    loc: Location


@dataclass(frozen=True)
class Statement:
    name: str
    text: str
    loc: Location  # of the name
    text_loc: Location  # of the first character of the expression text


@dataclass(frozen=True)
class RuleSwitch:
    name: str
    enabled: bool
    loc: Location


@dataclass(frozen=True)
class TuneEntry:
    chip: str
    shapes: dict[str, int]
    blocks: dict[str, int]
    estimated_cycles: int | None
    compiler: str
    loc: Location
    rules: dict[str, RuleSwitch] = field(default_factory=dict)
    block_locs: dict[str, Location] = field(default_factory=dict)


@dataclass
class Spec:
    name: str
    doc: str
    params: dict[str, Param]
    axes: dict[str, Axis]
    tensors: dict[str, Tensor]
    accumulators: dict[str, Accumulator]
    compute: list[Statement]
    rules: dict[str, RuleSwitch]
    lowering: str | None
    lowering_loc: Location | None
    file: str  # as shown in messages and in the generated header
    sha256: str
    name_loc: Location
    overrides: dict[str, object] = field(default_factory=dict)
    tune: dict[str, TuneEntry] = field(default_factory=dict)
    # The switches the spec's own `rules:` wrote, where `rules` also has a tune entry's.
    own_rules: dict[str, RuleSwitch] | None = None

    @property
    def authored_rules(self) -> dict[str, RuleSwitch]:
        """The rules the spec's author switched (a permission, for snake_order), without
        what tuning switched."""
        return self.rules if self.own_rules is None else self.own_rules

    def for_chip(self, chip: str, switched: dict[str, bool] | None = None) -> "Spec":
        """This spec as a build for `chip` sees it: the rules its tune entry for the chip
        switched take the place of its own `rules:` switches, and `switched` (a tuning
        candidate's) goes over both."""
        entry = self.tune.get(chip)
        rules = dict(self.rules)
        if entry is not None:
            rules.update(entry.rules)
        for name, on in (switched or {}).items():
            rules[name] = RuleSwitch(name, on, None)
        if rules == self.rules:
            return self
        return dataclasses.replace(self, rules=rules, own_rules=self.authored_rules)


# --- validation -------------------------------------------------------------

def _expect_mapping(node: Node, what: str) -> dict[str, Node]:
    if not isinstance(node.value, dict):
        raise SpecError(f"{what} must be a mapping", node.loc)
    return node.value


def _check_keys(node: Node, allowed, what: str) -> None:
    for key, loc in node.key_locs.items():
        if key not in allowed:
            raise SpecError(
                f"unknown key '{key}' in {what}",
                loc,
                did_you_mean(key, allowed) or f"allowed keys: {', '.join(sorted(allowed))}",
            )


def _identifier(node: Node | str, loc: Location, what: str) -> str:
    text = node.value if isinstance(node, Node) else node
    if not isinstance(text, str) or not IDENTIFIER.fullmatch(text):
        raise SpecError(
            f"{what} {text!r} is not a valid name",
            loc,
            "names are lower-case letters, digits and underscores, starting with a letter",
        )
    if keyword.iskeyword(text) or text in RESERVED:
        raise SpecError(f"{what} '{text}' is reserved in generated code", loc, "choose another name")
    return text


def _scalar_field(node: Node, f: Field, what: str):
    value = node.value
    if f.kind == "int":
        # JSON Schema (and so every editor) counts 128.0 as an integer: so do we.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SpecError(f"{what} must be a positive integer, got {value!r}", node.loc)
        return value
    if f.kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{what} must be a number, got {value!r}", node.loc)
        return float(value)
    if f.kind == "bool":
        if not isinstance(value, bool):
            raise SpecError(f"{what} must be true or false (or on/off), got {value!r}", node.loc)
        return value
    if f.kind == "dtype":
        if value not in DTYPES:
            raise SpecError(
                f"{what} {value!r} is not a supported dtype",
                node.loc,
                dtype_hint(str(value)),
            )
        return value
    if f.kind == "string":
        if not isinstance(value, str):
            raise SpecError(f"{what} must be a string", node.loc)
        return value
    if f.kind == "identifier":
        return _identifier(node, node.loc, what)
    if f.kind == "enum":
        if value not in f.choices:
            raise SpecError(
                f"{what} must be one of {', '.join(f.choices)}, got {value!r}",
                node.loc,
                did_you_mean(str(value), f.choices),
            )
        return value
    raise AssertionError(f.kind)


def _dims(node: Node, what: str) -> tuple[Dim, ...]:
    if not isinstance(node.value, list) or not node.value:
        raise SpecError(f"{what} must be a non-empty list of axis names, e.g. [m, n]", node.loc)
    dims = []
    for item in node.value:
        if not isinstance(item.value, str):
            raise SpecError(f"{what}: {item.value!r} is not an axis name", item.loc)
        text = item.value
        plus_one = text.endswith("+1")
        if "*" in text:
            parts = text.split("*")
            for i, part in enumerate(parts):
                dims.append(Dim(_identifier(part, item.loc, "axis"), item.loc, fused_with_next=i < len(parts) - 1))
            continue
        dims.append(Dim(_identifier(text[:-2] if plus_one else item, item.loc, "axis"), item.loc, plus_one))
    return tuple(dims)


def _entry(node: Node, fields: dict[str, Field], what: str) -> dict[str, object]:
    if node.value is None:
        node = Node({}, node.loc, key_locs={})
    _expect_mapping(node, what)
    _check_keys(node, fields, what)
    out: dict[str, object] = {}
    for key, f in fields.items():
        if key not in node.value:
            if f.required:
                raise SpecError(f"{what} is missing required key '{key}'", node.loc)
            continue
        child = node.value[key]
        if f.kind == "axis_list":
            out[key] = _dims(child, f"{what}.{key}")
        elif f.kind == "mapping":
            out[key] = _entry(child, f.fields, f"{what}.{key}")
        elif f.kind == "sizes":
            out[key] = _sizes(child, f"{what}.{key}")
        elif f.kind == "switches":
            out[key] = {
                name: RuleSwitch(name, _scalar_field(value, Field("bool", ""), f"{what}.{key}.{name}"), child.key_locs[name])
                for name, value in _expect_mapping(child, f"{what}.{key}").items()
            }
        else:
            out[key] = _scalar_field(child, f, f"{what}.{key}")
        out[key + "_loc"] = child.loc
    return out


def _sizes(node: Node, what: str) -> dict[str, int]:
    """A mapping of names to positive integers, e.g. {m: 2048, n: 2048}."""
    out = {}
    for key, child in _expect_mapping(node, what).items():
        _identifier(key, node.key_locs[key], f"{what} name")
        out[key] = _scalar_field(child, Field("int", ""), f"{what}.{key}")
    return out


def _param_value(node: Node, name: str):
    value = node.value
    if isinstance(value, bool) or isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        return _identifier(node, node.loc, f"value of param '{name}'")
    raise SpecError(f"param '{name}' must be a number, a boolean or a name", node.loc)


def _expression_loc(node: Node) -> Location:
    # Quoted scalars start one column before their text.
    loc = node.loc.shifted(1) if node.style in ("'", '"') else node.loc
    return loc if node.verbatim else TextStart(loc.file, loc.line, loc.column)


def parse_override(text: str) -> tuple[str, object]:
    """Parse one `-D NAME=VALUE` build option."""
    name, sep, raw = text.partition("=")
    where = Location("<command line>", 1, 1)
    if not sep or not IDENTIFIER.fullmatch(name.strip()):
        raise SpecError(f"-D expects NAME=VALUE, got {_shown(text)}", where)
    problem = f"-D {name}: {_shown(raw)} is not a number, boolean or name"
    if not raw.strip() or "\n" in raw or "\r" in raw:
        raise SpecError(problem, where)
    try:
        # A value means what it would mean in the spec: same numbers, same limits.
        value = load_yaml(raw, "<command line>").value
    except SpecError as err:
        raise SpecError(f"-D {name}: {err.message}", where, err.hint) from None
    if isinstance(value, str) and not IDENTIFIER.fullmatch(value):
        value = None
    if value is None or not isinstance(value, (bool, int, float, str)):
        raise SpecError(problem, where)
    return name.strip(), value


def _shown(text: str, limit: int = 60) -> str:
    """`text` quoted for a one-line message, cut short if long."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _apply_override(param: Param, value, where: Location) -> Param:
    old = param.value
    if isinstance(old, bool) != isinstance(value, bool) or isinstance(old, str) != isinstance(value, str):
        raise SpecError(
            f"-D {param.name}={value!r} does not match the type of its default {old!r}",
            where,
        )
    if isinstance(old, float) and isinstance(value, int):
        value = float(value)
    return Param(param.name, value, param.loc)


def parse_spec(
    text: str, file: str, overrides: dict[str, object] | None = None, header_path: str | None = None
) -> Spec:
    """Parse and validate a spec; errors name `file`, the header names `header_path` (default `file`)."""
    root = load_yaml(text, file)
    top = _expect_mapping(root, "the spec")
    _check_keys(root, SCHEMA, "the spec")
    for key in ("name", *REQUIRED_SECTIONS):
        if key not in top:
            raise SpecError(f"the spec is missing required key '{key}'", root.loc)

    name = _identifier(top["name"], top["name"].loc, "kernel name")
    doc = _scalar_field(top["doc"], SCHEMA["doc"], "doc") if "doc" in top else ""
    if any(ch in doc for ch in "\x00\r") or any(ord(ch) < 32 and ch not in "\n\t" for ch in doc):
        raise SpecError("doc contains control characters", top["doc"].loc)
    if bidi := next((ch for ch in doc if ch in BIDI_CONTROLS), None):
        raise SpecError(f"doc contains the bidirectional control U+{ord(bidi):04X}, which can make the generated "
                        "source read otherwise than it runs", top["doc"].loc, "remove it")

    def section(key: str) -> dict[str, tuple[Node, Location]]:
        if key not in top or top[key].value is None:
            return {}
        node = top[key]
        entries = _expect_mapping(node, key)
        return {k: (v, node.key_locs[k]) for k, v in entries.items()}

    params: dict[str, Param] = {}
    for pname, (node, loc) in section("params").items():
        _identifier(pname, loc, "param")
        params[pname] = Param(pname, _param_value(node, pname), loc)
    where = Location("<command line>", 1, 1)
    for oname, value in (overrides or {}).items():
        if oname not in params:
            raise SpecError(
                f"-D {oname}: the spec has no param '{oname}'",
                where,
                did_you_mean(oname, params) or f"params: {', '.join(params) or '(none)'}",
            )
        params[oname] = _apply_override(params[oname], value, where)

    axes: dict[str, Axis] = {}
    for aname, (node, loc) in section("axes").items():
        _identifier(aname, loc, "axis")
        e = _entry(node, AXIS_FIELDS, f"axes.{aname}")
        jagged = paged = None
        if "jagged" in e:
            j = e["jagged"]
            jagged = Jagged(j["offsets"], j["segment"], j["max"], e["jagged_loc"])
        if "paged" in e:
            g = e["paged"]
            paged = Paged(g["table"], g["lengths"], g["segment"], g.get("page_size", 16), e["paged_loc"])
        if jagged and paged:
            raise SpecError(f"axis '{aname}' cannot be both jagged and paged", e["paged_loc"])
        axes[aname] = Axis(
            aname, e.get("block"), e.get("max"), loc, e.get("block_loc"), jagged, paged, e.get("max_loc")
        )

    tensors: dict[str, Tensor] = {}
    for tname, (node, loc) in section("tensors").items():
        _identifier(tname, loc, "tensor")
        e = _entry(node, TENSOR_FIELDS, f"tensors.{tname}")
        tensors[tname] = Tensor(tname, e["dims"], e["dtype"], loc)

    accumulators: dict[str, Accumulator] = {}
    for cname, (node, loc) in section("accumulators").items():
        _identifier(cname, loc, "accumulator")
        e = _entry(node, ACCUMULATOR_FIELDS, f"accumulators.{cname}")
        accumulators[cname] = Accumulator(
            cname, e["over"], e["over_loc"], e["dims"], e["init"], e.get("dtype", "float32"), loc
        )

    compute: list[Statement] = []
    for sname, (node, loc) in section("compute").items():
        _identifier(sname, loc, "compute name")
        if isinstance(node.value, bool) or not isinstance(node.value, (str, int, float)):
            raise SpecError(f"compute.{sname} must be an expression", node.loc)
        expression = str(node.value)
        if "\n" in expression.strip():
            raise SpecError(f"compute.{sname} must fit on one line", node.loc)
        compute.append(Statement(sname, expression, loc, _expression_loc(node)))
    if not compute:
        raise SpecError("compute has no statements", top["compute"].loc)

    rules: dict[str, RuleSwitch] = {}
    for rname, (node, loc) in section("rules").items():
        rules[rname] = RuleSwitch(rname, _scalar_field(node, SCHEMA["rules"].entry, f"rules.{rname}"), loc)

    tune: dict[str, TuneEntry] = {}
    for chip, (node, loc) in section("tune").items():
        if chip not in CHIPS:
            raise SpecError(f"tune.{chip}: not a chip", loc, did_you_mean(chip, CHIPS) or f"chips: {', '.join(CHIPS)}")
        e = _entry(node, TUNE_FIELDS, f"tune.{chip}")
        for axis, block_loc in node.value["blocks"].key_locs.items():
            if axis not in axes or (axes[axis].block is None):
                raise SpecError(f"tune.{chip}.blocks: '{axis}' is not an axis with a block", block_loc,
                                did_you_mean(axis, [a for a in axes if axes[a].block]))
        sizes = node.value["shapes"]
        if not sizes.value:
            raise SpecError(f"tune.{chip}.shapes: no sizes", sizes.loc, "give the sizes the blocks were tuned at")
        for size_name, size_loc in sizes.key_locs.items():
            if size_name not in axes and not any(a.jagged and a.jagged.max == size_name for a in axes.values()):
                raise SpecError(f"tune.{chip}.shapes: '{size_name}' is not an axis or a jagged max", size_loc,
                                did_you_mean(size_name, [*axes, *(a.jagged.max for a in axes.values() if a.jagged)]))
        tune[chip] = TuneEntry(chip, e["shapes"], e["blocks"], e.get("estimated_cycles"), e.get("compiler", ""), loc,
                               e.get("rules", {}), dict(node.value["blocks"].key_locs))

    lowering = _scalar_field(top["lowering"], SCHEMA["lowering"], "lowering") if "lowering" in top else None
    _check_names(params, axes, tensors, accumulators, compute)
    _check_jagged(axes, tensors)
    for t in tensors.values():
        _check_dims_known(t.dims, axes, f"tensor '{t.name}'")
    for a in accumulators.values():
        _check_dims_known(a.dims, axes, f"accumulator '{a.name}'")
        if a.over not in axes:
            raise SpecError(
                f"accumulator '{a.name}' is over unknown axis '{a.over}'", a.over_loc, did_you_mean(a.over, axes)
            )

    return Spec(
        name=name,
        doc=doc.strip(),
        params=params,
        axes=axes,
        tensors=tensors,
        accumulators=accumulators,
        compute=compute,
        rules=rules,
        lowering=lowering,
        lowering_loc=top["lowering"].loc if "lowering" in top else None,
        file=header_path or file,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        name_loc=top["name"].loc,
        overrides=dict(overrides or {}),
        tune=tune,
    )


def _check_jagged(axes: dict[str, Axis], tensors: dict[str, Tensor]) -> None:
    for a in axes.values():
        j = a.jagged
        if j is None:
            continue
        if j.segment not in axes:
            raise SpecError(f"jagged axis '{a.name}' names unknown segment axis '{j.segment}'", j.loc, did_you_mean(j.segment, axes))
        if axes[j.segment].block is not None or axes[j.segment].jagged is not None:
            raise SpecError(f"segment axis '{j.segment}' must be a plain axis without a block", axes[j.segment].loc)
        if j.offsets not in tensors:
            raise SpecError(f"jagged axis '{a.name}' names unknown offsets tensor '{j.offsets}'", j.loc, did_you_mean(j.offsets, tensors))
        offsets = tensors[j.offsets]
        if offsets.dtype != "int32" or len(offsets.dims) != 1 or not offsets.dims[0].plus_one or offsets.dims[0].axis != j.segment:
            raise SpecError(
                f"offsets tensor '{j.offsets}' must be int32 with dims [{j.segment}+1]", offsets.loc
            )
        if a.block is None:
            raise SpecError(f"jagged axis '{a.name}' needs a block", a.loc, f"set axes.{a.name}.block")
        if j.max in axes or j.max in tensors:
            raise SpecError(f"jagged max '{j.max}' clashes with an axis or tensor name", j.loc)
    for t in tensors.values():
        for d in t.dims:
            if d.plus_one and not any(a.jagged and a.jagged.offsets == t.name for a in axes.values()):
                raise SpecError(f"'{d.axis}+1' is only for offsets tensors of jagged axes", d.loc)
    paged = [a for a in axes.values() if a.paged]
    if len(paged) > 1:
        raise SpecError("one paged axis is supported", paged[1].paged.loc)
    for a in paged:
        g = a.paged
        if g.segment not in axes or axes[g.segment].block is not None:
            raise SpecError(f"paged axis '{a.name}' needs a plain segment axis, got '{g.segment}'", g.loc, did_you_mean(g.segment, axes))
        for role, name, rank in (("table", g.table, 2), ("lengths", g.lengths, 1)):
            if name not in tensors:
                raise SpecError(f"paged axis '{a.name}' names unknown {role} tensor '{name}'", g.loc, did_you_mean(name, tensors))
            t = tensors[name]
            if t.dtype != "int32" or len(t.dims) != rank or t.dims[0].axis != g.segment:
                shape = f"[{g.segment}, PAGES]" if rank == 2 else f"[{g.segment}]"
                raise SpecError(f"{role} tensor '{name}' must be int32 with dims {shape}", t.loc)
        if a.block is None:
            raise SpecError(f"paged axis '{a.name}' needs a block (pages per compute block)", a.loc)


def _check_dims_known(dims: tuple[Dim, ...], axes: dict[str, Axis], what: str) -> None:
    seen = set()
    for d in dims:
        if d.axis not in axes:
            raise SpecError(f"{what} uses undefined axis '{d.axis}'", d.loc, did_you_mean(d.axis, axes))
        if d.axis in seen:
            raise SpecError(f"{what} lists axis '{d.axis}' twice", d.loc)
        seen.add(d.axis)
    if not dims:
        raise SpecError(f"{what} has no dims", None)


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _check_names(params, axes, tensors, accumulators, compute) -> None:
    """One namespace: a name means one thing, in the spec and in the generated code."""
    owners: dict[str, tuple[str, Location]] = {}
    for kind, table in (("param", params), ("axis", axes), ("tensor", tensors), ("accumulator", accumulators)):
        for name, item in table.items():
            if name in owners:
                other_kind, other_loc = owners[name]
                raise SpecError(
                    f"'{name}' names both {_a(other_kind)} (line {other_loc.line}) and {_a(kind)}", item.loc
                )
            owners[name] = (kind, item.loc)
    values = (*tensors, *(st.name for st in compute))
    derived = names.generated_names(axes, (*tensors, *accumulators), values)
    for t in tensors.values():
        for group in t.fused:
            if len(group) > 1:  # the caller's dim `a*b` is bound to a local named a_b
                derived["_".join(group)] = "*".join(group)
    def generated_for(name: str) -> str | None:
        return names.generated_owner(name, derived, values)

    for name, (kind, loc) in owners.items():
        if owner := generated_for(name):
            raise SpecError(f"{kind} '{name}' clashes with a name generated for {owner}", loc, "rename it")
    for a in axes.values():  # a jagged axis's max is an entry keyword that expressions read
        if not a.jagged:
            continue
        if a.jagged.max in owners or any(st.name == a.jagged.max for st in compute):
            what = owners[a.jagged.max][0] if a.jagged.max in owners else "compute statement"
            raise SpecError(f"jagged max '{a.jagged.max}' clashes with the {what} of that name", a.jagged.loc, "rename one of them")
        if owner := generated_for(a.jagged.max):
            raise SpecError(f"jagged max '{a.jagged.max}' clashes with a name generated for {owner}", a.jagged.loc, "rename it")
    for st in compute:
        if owner := generated_for(st.name):
            raise SpecError(f"compute name '{st.name}' clashes with a name generated for {owner}", st.loc, "rename it")
        if st.name in owners and owners[st.name][0] in ("param", "axis"):
            raise SpecError(f"compute assigns to {owners[st.name][0]} '{st.name}'", st.loc)


def load_spec(
    path: Path, display_path: str, overrides: dict[str, object] | None = None, shown_path: str | None = None
) -> Spec:
    """Load the spec at `path`. `display_path` goes into the generated header; errors
    name `shown_path`, the path as the user wrote it (default `display_path`)."""
    shown = shown_path or display_path
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise SpecError(f"cannot read spec: {err.strerror}", Location(shown, 1, 1)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise SpecError("the spec is not UTF-8 text", Location(shown, line, column)) from None
    return parse_spec(text, shown, overrides, header_path=display_path)
