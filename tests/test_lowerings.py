"""The lowering table and the naming table: one unit per lowering, one list of generated names."""

import re
from pathlib import Path

import pytest

from codegen import names, spec
from codegen.build import plan_spec
from codegen.errors import SpecError
from codegen.lowerings import CHOOSABLE, LOWERINGS

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
    assert {"block_m", "m_index", "num_m_tiles", "x_ref", "x_hbm_ref", "x_index_map", "s_masked"} <= set(derived)
    assert all(derived[n] in ("m", "x", "s") for n in derived)


def test_every_package_is_installed():
    """A wheel (the environment pre-commit builds for the hook) carries only listed packages."""
    import tomllib

    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(PACKAGE.parent).parts) for p in PACKAGE.rglob("__init__.py")}
    assert found <= listed, f"not installed: {sorted(found - listed)}"
