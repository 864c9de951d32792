"""Stage 1: YAML with positions, and spec validation."""

import json

import pytest

from codegen.errors import SpecError
from codegen.source import load_yaml
from codegen.spec import SCHEMA, json_schema, parse_override, parse_spec

MINIMAL = """\
name: k
params:
  alpha: 2.0
  flag: true
axes:
  m: {block: 8}
  n: {}
tensors:
  x: {dims: [m, n], dtype: float32}
  out: {dims: [m, n], dtype: float32}
compute:
  out: x * alpha
"""


def test_nodes_keep_line_and_column():
    root = load_yaml("a:\n  b: [1, 2.5, x]\n", "f.yaml")
    b = root.value["a"].value["b"]
    assert (b.loc.line, b.loc.column) == (2, 6)
    assert [n.value for n in b.value] == [1, 2.5, "x"]
    assert (b.value[2].loc.line, b.value[2].loc.column) == (2, 15)
    assert root.value["a"].key_locs["b"].column == 3


def test_yaml_infinities_are_floats():
    root = load_yaml("a: -.inf\nb: .inf\n", "f.yaml")
    assert root.value["a"].value == float("-inf") and root.value["b"].value == float("inf")


def test_spec_is_typed_and_located():
    spec = parse_spec(MINIMAL, "k.yaml")
    assert spec.name == "k"
    assert spec.params["alpha"].value == 2.0
    assert spec.axes["m"].block == 8 and spec.axes["n"].block is None
    assert spec.tensors["x"].axes == ("m", "n")
    assert spec.compute[0].name == "out"
    assert (spec.compute[0].text_loc.line, spec.compute[0].text_loc.column) == (12, 8)
    assert len(spec.sha256) == 64


def test_quoted_expression_location_skips_the_quote():
    spec = parse_spec(MINIMAL.replace("out: x * alpha", 'out: "x * alpha"'), "k.yaml")
    assert spec.compute[0].text_loc.column == 9


def test_override_replaces_param_and_keeps_its_type():
    spec = parse_spec(MINIMAL, "k.yaml", {"alpha": 3})
    assert spec.params["alpha"].value == 3.0 and isinstance(spec.params["alpha"].value, float)
    with pytest.raises(SpecError, match="does not match the type"):
        parse_spec(MINIMAL, "k.yaml", {"flag": 1.5})


@pytest.mark.parametrize(
    "text, expected",
    [("alpha=0.5", ("alpha", 0.5)), ("n=3", ("n", 3)), ("on=true", ("on", True)), ("act=silu", ("act", "silu"))],
)
def test_parse_override(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["alpha", "=1", "a=", "a=x y", "a=[1]", "a='q\"'"])
def test_parse_override_rejects(text):
    with pytest.raises(SpecError):
        parse_override(text)


def test_schema_covers_every_section_and_field():
    schema = json_schema()
    assert set(schema["properties"]) == set(SCHEMA)
    axes = schema["properties"]["axes"]["additionalProperties"]
    assert set(axes["properties"]) == {"block", "max", "jagged", "paged"}
    assert axes["properties"]["jagged"]["required"] == ["offsets", "segment", "max"]
    assert axes["additionalProperties"] is False
    tensors = schema["properties"]["tensors"]["additionalProperties"]
    assert tensors["required"] == ["dims", "dtype"]
    assert "bfloat16" in tensors["properties"]["dtype"]["enum"]
    json.dumps(schema)  # serializable
