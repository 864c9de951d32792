"""`codegen verify`: its cases reach every edge, and its error has no floor."""

import math

import numpy as np
import pytest

from codegen.build import build_source, plan_spec
from codegen.verify import TILES, cases, max_error, verify_built

from conftest import KERNELS, SPECS, build_text


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


# Flash attention that rounds p to bfloat16 for the second matmul, into a float32 output.
BF16_P_ATTENTION = """\
name: bf16p_attention
doc: Attention with p rounded to bfloat16 before it meets v.
axes:
  batch: {}
  sq: {block: 128}
  skv: {block: 128}
  d: {max: 128}
tensors:
  q: {dims: [batch, sq, d], dtype: bfloat16}
  k: {dims: [batch, skv, d], dtype: bfloat16}
  v: {dims: [batch, skv, d], dtype: bfloat16}
  out: {dims: [batch, sq, d], dtype: float32}
accumulators:
  m: {over: skv, dims: [batch, sq], init: -1.0e+30}
  l: {over: skv, dims: [batch, sq], init: 0}
  acc: {over: skv, dims: [batch, sq, d], init: 0}
compute:
  s: dot(q, k, over=d) * rsqrt(extent(d))
  m_next: maximum(m, max(s, over=skv))
  rescale: exp(m - m_next)
  p: exp(s - m_next)
  l: rescale * l + sum(p, over=skv)
  acc: rescale * acc + dot(cast(p, bfloat16), v, over=skv)
  m: m_next
  out: acc / maximum(l, 1.0e-30)
"""


def test_a_cast_to_bfloat16_sets_the_tolerance_of_a_float32_output(tmp_path):
    """The kernel rounds p against each step's running max, the reference against the
    final one: they differ by bfloat16's rounding, which float32's tolerance failed."""
    from codegen.verify import TOLERANCE, tolerance, verify_built

    built = build_text(tmp_path, BF16_P_ATTENTION)
    assert tolerance(built.plan.ir, "out") == TOLERANCE["bfloat16"]
    log = []
    assert verify_built(built, log=log.append), "\n".join(log)
    uncast = build_text(tmp_path, BF16_P_ATTENTION.replace("cast(p, bfloat16)", "p"))
    assert tolerance(uncast.plan.ir, "out") == TOLERANCE["float32"]  # bfloat16 inputs are exact
