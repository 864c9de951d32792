"""Softmax over each segment's rows: a reduction over a jagged axis used elementwise against it."""

import jax.numpy as jnp
import numpy as np
import pytest

from codegen.build import plan_spec
from codegen.errors import SpecError
from codegen.report import format_plan
from codegen.verify import Case, load_module, lower_for_tpu

from conftest import SPECS, build_text, checked_in_module

BLOCK = 24  # rows per tile: a multiple of 8 (f32)
H = 128
EDGES = {
    "mixed": [0, 1, 8, 9, BLOCK - 1, 0, BLOCK, 7],
    "one segment at the max": [BLOCK],
    "all empty but one": [0, 0, 3, 0],
    "all empty": [0, 0],
}


def softmax_per_segment(x, offsets):
    x = np.asarray(x, np.float64)
    out = np.zeros_like(x)
    for b in range(len(offsets) - 1):
        rows = x[offsets[b]:offsets[b + 1]]
        if len(rows):
            e = np.exp(rows - rows.max(axis=0))
            out[offsets[b]:offsets[b + 1]] = e / e.sum(axis=0)
    return out


@pytest.mark.parametrize("edges", EDGES)
def test_matches_numpy(nan_interpret, edges):
    lengths = EDGES[edges]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    x = np.random.default_rng(1).standard_normal((int(offsets[-1]), H)).astype(np.float32) * 3
    got = checked_in_module("jagged_softmax").jagged_softmax(
        jnp.asarray(x), jnp.asarray(offsets), max_seq_len=max(max(lengths), 1), block_t=BLOCK, interpret=nan_interpret
    )
    got = np.asarray(got)
    assert not np.isnan(got).any()
    np.testing.assert_allclose(got, softmax_per_segment(x, offsets), atol=2e-6)


def test_plan_keeps_the_axis_whole_and_says_so():
    _, plan = plan_spec(SPECS / "jagged_softmax.yaml")
    assert plan.axes["t"].whole and plan.ir.whole_axes == {"t"} and not plan.ir.accumulators
    assert "kept whole" in format_plan(plan)


def test_a_segment_longer_than_the_tile_is_an_error():
    x, offsets = jnp.zeros((40, H), jnp.float32), jnp.asarray([0, 40], jnp.int32)
    with pytest.raises(ValueError, match="held whole in one tile"):
        checked_in_module("jagged_softmax").jagged_softmax(x, offsets, max_seq_len=40, block_t=32, interpret=True)


def test_dense_tiled_axis_is_kept_whole_too(tmp_path, nan_interpret):
    """The same softmax over a dense tiled axis: the plan drops its block and holds it whole."""
    text = """name: colsoftmax
axes:
  m: {block: 64}
  n: {block: 128}
tensors:
  x: {dims: [m, n], dtype: float32}
  out: {dims: [m, n], dtype: float32}
compute:
  e: exp(x - max(x, over=m))
  out: e / sum(e, over=m)
"""
    built = build_text(tmp_path, text)
    assert built.plan.axes["m"].mode == "full" and "kept whole" in built.plan.axes["m"].reason
    x = np.random.default_rng(2).standard_normal((200, 300)).astype(np.float32)
    got = np.asarray(load_module(built.source, "colsoftmax").colsoftmax(jnp.asarray(x), interpret=nan_interpret))
    want = np.exp(x - x.max(0)) / np.exp(x - x.max(0)).sum(0)
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_declared_accumulators_keep_their_online_form():
    """attention reduces over skv against skv too, but through declared accumulators."""
    _, plan = plan_spec(SPECS / "attention.yaml")
    assert plan.ir.whole_axes == set() and plan.axes["skv"].mode == "tiled"


def test_lowers_for_tpu():
    _, plan = plan_spec(SPECS / "jagged_softmax.yaml")
    case = Case("lowering", {"b": 8, "t": 2048, "h": H}, maxima={"max_seq_len": 512})
    assert "tpu_custom_call" in lower_for_tpu(checked_in_module("jagged_softmax"), plan, case)
