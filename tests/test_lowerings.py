"""The lowering table and the naming table: one unit per lowering, one list of generated names."""

import ast
import re
from pathlib import Path

import pytest

from codegen import names, spec
from codegen.build import plan_spec
from codegen.errors import SpecError
from codegen.lowerings import CHOOSABLE, LOWERINGS
from codegen.render import render
from codegen.rules import RULE_NAMES

from conftest import SPECS, build_text

PACKAGE = Path(__file__).resolve().parent.parent / "codegen"


@pytest.mark.parametrize(
    "name, lowering",
    [("exp", "pallas_grid"), ("attention", "pallas_grid"), ("gdpa", "outer_pipeline"),
     ("grouped_gemm", "outer_pipeline"), ("paged_attention", "paged")],
)
def test_the_first_unit_that_applies_is_picked(name, lowering):
    _, plan = plan_spec(SPECS / f"{name}.yaml")
    assert plan.lowering == lowering and plan.unit is LOWERINGS[lowering]
    assert "the default" in plan.lowering_reason or lowering in ("pallas_grid", "paged")


def test_spec_schema_offers_exactly_the_choosable_units():
    assert set(spec.LOWERINGS) == set(CHOOSABLE) == {"outer_pipeline", "grid"}


def test_a_unit_that_does_not_apply_is_a_located_error(tmp_path):
    text = (SPECS / "paged_attention.yaml").read_text() + "lowering: outer_pipeline\n"
    with pytest.raises(SpecError, match="lowering 'outer_pipeline' does not apply") as err:
        build_text(tmp_path, text)
    assert err.value.location.line == text.count("\n")
    assert "this kernel has one lowering" in str(err.value)


def test_no_lowering_branches_outside_the_units():
    """Only codegen/lowerings/ knows which lowering was picked."""
    pattern = re.compile(r"\.lowering\s*(==|!=|in\b)|lowering\s*==\s*\"")
    offenders = [
        f"{path.name}:{i}"
        for path in PACKAGE.glob("*.py")
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


@pytest.mark.parametrize("name", ["flops", "cost", "bytes_accessed", "start_fetch", "jnp", "tile_valid"])
def test_fixed_generated_names_are_reserved(tmp_path, name):
    text = (SPECS / "exp.yaml").read_text().replace("  x:", f"  {name}:").replace("exp(x)", f"exp({name})")
    with pytest.raises(SpecError, match="reserved"):
        build_text(tmp_path, text)


def test_names_generated_for_a_tensor_cannot_be_taken(tmp_path):
    # `x_index_map` is the index map generated for tensor x
    text = (SPECS / "axpy.yaml").read_text().replace("alpha: 2.0", "x_index_map: 2.0").replace("alpha *", "x_index_map *")
    with pytest.raises(SpecError, match="clashes with a name generated for 'x'"):
        build_text(tmp_path, text)


def test_generated_names_cover_every_pattern():
    derived = names.generated_names(["m"], ["x"], ["s"])
    assert {"block_m", "m_index", "num_m_tiles", "m_step", "x_ref", "x_hbm_ref", "x_index_map", "s_acc_ref"} <= set(derived)
    assert all(derived[n] in ("m", "x", "s") for n in derived)
    for variant in ("s_t", "s_t2", "s_masked", "s_masked_3", "s_t_masked"):
        assert names.generated_owner(variant, derived, ["s"]) == "'s'"
    assert names.generated_owner("s", derived, ["s"]) is None and names.generated_owner("st", derived, ["s"]) is None


def _names_bound_in_kernel_and_entry(source: str, kernel: str) -> set[str]:
    """Names assigned, defined or taken as arguments in the entry point and the kernel
    (helpers are module functions of their own, which spec names cannot reach)."""
    tree = ast.parse(source)
    roots = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in (kernel, f"_{kernel}_kernel")]
    bound = set()
    for node in (node for root in roots for node in ast.walk(root)):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
        elif isinstance(node, ast.FunctionDef):
            bound |= {node.name, *(a.arg for a in node.args.args + node.args.kwonlyargs)}
    return bound


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.yaml")) + sorted((Path(__file__).parent / "specs").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_every_generated_name_is_in_the_naming_table(path):
    """A name the generated code binds that the table does not know could be taken by
    a spec name, and the kernel would read one for the other."""
    unknown = {}
    for switched in [None, *({rule: False} for rule in RULE_NAMES), {"last_block_mask": True}]:
        try:
            loaded, plan = plan_spec(path, chip="v6e", rules=switched)
        except SpecError:  # a switch this kernel cannot take
            continue
        values = (*loaded.tensors, *(st.name for st in loaded.compute))
        derived = names.generated_names(loaded.axes, (*loaded.tensors, *loaded.accumulators), values)
        spec_names = {*loaded.params, *loaded.axes, *loaded.tensors, *loaded.accumulators, *values,
                      *(a.jagged.max for a in loaded.axes.values() if a.jagged),
                      *("_".join(group) for t in loaded.tensors.values() for group in t.fused)}
        for name in _names_bound_in_kernel_and_entry(render(plan, loaded.file), loaded.name):
            if name.startswith("_") or name == loaded.name:  # spec names start with a letter
                continue
            if name not in spec_names and name not in names.RESERVED and not names.generated_owner(name, derived, values):
                unknown.setdefault(name, switched)
    assert unknown == {}


@pytest.mark.parametrize("field, text, replaced, owner", [
    ("jagged max", "hstu", ("max_seq_len", "sq_start"), "'sq'"),
    ("jagged max", "hstu", ("max_seq_len", "q_ref"), "'q'"),
    ("jagged max", "gdpa", ("max_seq_len", "block_sq"), "'sq'"),
    ("compute name", "bmm", ("out: dot(a, b, over=k)", "k_step: a * 2.0\n  out: dot(k_step, b, over=k)"), "'k'"),
    ("tensor", "bmm", ("  out: {", "  out_acc_ref: {dims: [batch, m, k], dtype: float32}\n  out: {"), "'out'"),
    ("tensor", "gdpa", ("v", "sq_tiles"), "'sq'"),
    ("compute name", "ragged_paged_attention", ("  rescale:", "  q_rows:"), "'q'"),
    ("compute name", "exp", ("out: exp(x)", "x_t2: exp(x)\n  out: x_t2"), "'x'"),
    ("param", "axpy", ("alpha", "k_v_index_map"), "an index map"),
    ("compute name", "exp", ("out: exp(x)", "pass_3: exp(x)\n  out: pass_3"), "a pass of the ordered axis"),
])
def test_a_spec_name_cannot_take_a_generated_one(tmp_path, field, text, replaced, owner):
    """Each of these built, and the kernel read the generated local for the spec's name."""
    old, new = replaced
    source = (SPECS / f"{text}.yaml").read_text()
    assert old in source
    # a bare name is renamed wherever it is used
    renamed = re.sub(rf"\b{old}\b", new, source) if old.isidentifier() else source.replace(old, new)
    with pytest.raises(SpecError, match=f"{field} '.*' clashes with a name generated for {re.escape(owner)}"):
        build_text(tmp_path, renamed)


def test_a_kernel_cannot_be_named_after_a_module_import(tmp_path):
    text = (SPECS / "grouped_gemm.yaml").read_text().replace("name: grouped_gemm", "name: dataclasses")
    with pytest.raises(SpecError, match="kernel name 'dataclasses' is reserved"):
        build_text(tmp_path, text)


def test_every_package_is_installed():
    """A wheel (the environment pre-commit builds for the hook) carries only listed packages."""
    import tomllib

    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(PACKAGE.parent).parts) for p in PACKAGE.rglob("__init__.py")}
    assert found <= listed, f"not installed: {sorted(found - listed)}"
