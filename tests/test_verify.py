"""`codegen verify`: its cases reach every edge, and its error has no floor."""

import math

import numpy as np
import pytest

from codegen.build import build_source, plan_spec
from codegen.verify import TILES, cases, max_error, verify_built

from conftest import KERNELS, SPECS


def _tiles(size, block):
    return -(-size // block)


@pytest.mark.parametrize("name", [*KERNELS, "grouped_gemm"])
def test_every_tiled_axis_gets_three_tiles_and_a_tail(name):
    _, plan = plan_spec(SPECS / f"{name}.yaml")
    tiled = [a for a, ap in plan.axes.items() if ap.mode == "tiled"]
    for axis in tiled:
        block = plan.axes[axis].block
        assert any(
            _tiles(c.sizes[axis], block) >= TILES and c.sizes[axis] % block for c in cases(plan)
        ), f"{axis}: no case with {TILES} tiles and a tail"


@pytest.mark.parametrize("name", ["gdpa", "gdpa_jagged", "grouped_gemm"])
def test_jagged_cases_have_every_segment_edge(name):
    _, plan = plan_spec(SPECS / f"{name}.yaml")
    for axis, a in plan.ir.axes.items():
        if not a.jagged:
            continue
        block = plan.axes[axis].block
        extents = {e for c in cases(plan) for e in c.lengths[axis]}
        top = TILES * block
        assert {0, 1, block, block + 1, top - 1, top} <= extents
        assert all(c.maxima[a.jagged.max] == top for c in cases(plan))


def test_error_is_relative_to_the_outputs_own_scale():
    want = np.full((4,), 1e-3)
    assert math.isclose(max_error(want + 5e-4, want), 0.5)  # a floor of 1.0 would call this 5e-4
    assert max_error(np.zeros(3), np.zeros(3)) == 0.0
    assert max_error(np.full(3, 1e-9), np.zeros(3)) == math.inf
    assert math.isnan(max_error(np.array([np.nan, 0.0]), np.zeros(2)))


def test_verify_catches_a_stale_output_block(monkeypatch):
    """With the jagged axis outside N in the pipeline grid (as before the fix), verify fails."""
    import codegen.lowerings.pipeline as pipeline

    built_ok = build_source(SPECS / "grouped_gemm.yaml")
    monkeypatch.setattr(pipeline, "pipeline_order", lambda grid, axes: sorted(grid, key=lambda a: axes[a].semantics == "arbitrary"))
    built_stale = build_source(SPECS / "grouped_gemm.yaml")
    assert built_stale.plan.pipeline_grid == ["g", "t", "n", "k"]
    log = []
    assert not verify_built(built_stale, log=log.append)
    assert any("FAILED" in line for line in log)
    assert built_ok.plan.pipeline_grid == ["g", "n", "t", "k"]
