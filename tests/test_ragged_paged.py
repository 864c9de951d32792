"""Ragged paged attention: a jagged query axis and a paged K/V axis of the same sequences.

Compared with numpy written from the math, and with JAX's own ragged paged attention on the
same inputs. JAX's kernel does not run in jax 0.10's TPU interpreter (it fails on a reshaped
ref), so the comparison is with the reference implementation that ships beside it,
`ref_ragged_paged_attention`, after converting our separate K and V pages into its
interleaved [pages, page_size, 2 * kv_heads, head_dim] layout.
"""

import sys

import jax.numpy as jnp
import numpy as np
import pytest

from codegen.build import plan_spec
from codegen.report import format_plan
from codegen.verify import Case, lower_for_tpu

from conftest import ROOT, SPECS, assert_compiles, build_text, checked_in_module

KVH, G, D, PAGE, PPB, BLOCK_Q = 2, 2, 128, 16, 2, 16
SCALE = 1 / np.sqrt(128)
# Per sequence: query rows and key/value positions. Empty sequences, a query longer than its
# positions (its first rows see nothing), one row, three query tiles, four blocks of pages.
BATCHES = {
    "mixed": ([0, 1, 5, 3 * BLOCK_Q - 1, 1, 3 * BLOCK_Q, 0, 4], [0, 17, 5, 64, 1, 100, 30, 2]),
    "decode only": ([1, 1, 1], [33, 1, 128]),
    "all empty but one": ([0, 0, 7, 0], [0, 0, 9, 0]),
}


def make_inputs(q_lens, kv_lens, seed=0):
    rng = np.random.default_rng(seed)
    b, pages = len(q_lens), 8
    num_pages = b * pages + 3
    table = rng.permutation(num_pages)[: b * pages].reshape(b, pages).astype(np.int32)
    q = jnp.asarray(rng.standard_normal((sum(q_lens), KVH * G, D)), jnp.bfloat16)
    k, v = (jnp.asarray(rng.standard_normal((KVH, num_pages, PAGE, D)), jnp.bfloat16) for _ in range(2))
    cu = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    return q, k, v, np.asarray(kv_lens, np.int32), table, cu


def reference(q, k, v, kv_lens, table, cu):
    """Row i of sequence b sees positions t <= kv_len - q_len + i; a row that sees none is 0."""
    qf, kf, vf = (np.asarray(x, np.float32).astype(np.float64) for x in (q, k, v))
    out = np.zeros(qf.shape)
    for b in range(len(kv_lens)):
        n, length = cu[b + 1] - cu[b], kv_lens[b]
        pos = np.arange(length)
        kb, vb = kf[:, table[b, pos // PAGE], pos % PAGE], vf[:, table[b, pos // PAGE], pos % PAGE]
        for h in range(KVH * G):
            for i in range(n):
                allowed = pos <= length - n + i
                if allowed.any():
                    s = np.where(allowed, kb[h // G] @ qf[cu[b] + i, h] * SCALE, -np.inf)
                    p = np.exp(s - s.max())
                    out[cu[b] + i, h] = p / p.sum() @ vb[h // G]
    return out


def run(module, q, k, v, kv_lens, table, cu, interpret):
    return np.asarray(
        module.ragged_paged_attention(
            q, k, v, jnp.asarray(kv_lens), jnp.asarray(table), jnp.asarray(cu),
            max_q_len=max(int(np.diff(cu).max()), 1), pages_per_compute_block=PPB, block_tq=BLOCK_Q,
            interpret=interpret,
        ),
        np.float32,
    )


@pytest.mark.parametrize("batch", BATCHES)
def test_matches_numpy(nan_interpret, batch):
    inputs = make_inputs(*BATCHES[batch])
    got = run(checked_in_module("ragged_paged_attention"), *inputs, nan_interpret)
    want = reference(*inputs)
    assert not np.isnan(got).any()
    np.testing.assert_allclose(got, want, atol=1e-2 * max(np.abs(want).max(), 1.0))


def test_matches_jax_reference_implementation(nan_interpret):
    from jax.experimental.pallas.ops.tpu.ragged_paged_attention import ref_ragged_paged_attention

    q, k, v, kv_lens, table, cu = inputs = make_inputs(*BATCHES["mixed"], seed=1)
    num_pages = k.shape[1]
    kv_pages = jnp.stack([k.transpose(1, 2, 0, 3), v.transpose(1, 2, 0, 3)], axis=3).reshape(num_pages, PAGE, 2 * KVH, D)
    # JAX's reference assumes every sequence has a query row and sees at least one position
    keep = [b for b in range(len(kv_lens)) if cu[b + 1] > cu[b] and kv_lens[b] >= cu[b + 1] - cu[b]]
    theirs = np.asarray(
        ref_ragged_paged_attention(
            q, kv_pages, jnp.asarray(kv_lens), jnp.asarray(table), jnp.asarray(cu),
            jnp.asarray([len(kv_lens)], jnp.int32), sm_scale=SCALE,
        ),
        np.float32,
    )
    ours = run(checked_in_module("ragged_paged_attention"), *inputs, nan_interpret)
    rows = np.concatenate([np.arange(cu[b], cu[b + 1]) for b in keep])
    assert len(rows) > 3 * BLOCK_Q
    np.testing.assert_allclose(ours[rows], theirs[rows], atol=2e-2)


def _page_dmas(module, inputs):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from dma_traffic import counting_traffic, interpret_params

    with counting_traffic() as traffic:
        run(module, *inputs, interpret_params(traffic))
    return traffic.dmas


def test_mask_skip_stops_the_page_loop_at_the_last_live_block(tmp_path):
    """Blocks of positions after every row of a query tile are never fetched."""
    q_lens, kv_lens = [1, 3 * BLOCK_Q], [128, 128]  # a decode row, and a prefill at the end of its positions
    inputs = make_inputs(q_lens, kv_lens)
    from codegen.verify import load_module

    off = load_module(build_text(tmp_path, (SPECS / "ragged_paged_attention.yaml").read_text() + "rules:\n  mask_skip: false\n").source, "rpa")
    on_dmas, off_dmas = _page_dmas(checked_in_module("ragged_paged_attention"), inputs), _page_dmas(off, inputs)
    block = PPB * PAGE
    row_copies = 2 * KVH * (1 + 3)  # q in and out, per head and query tile
    pages_needed = 0
    for n, length in zip(q_lens, kv_lens):
        for tile in range(-(-n // BLOCK_Q)):
            last_row = tile * BLOCK_Q + BLOCK_Q - 1  # the tile's last row, as the kernel bounds it
            blocks = min(-(-length // block), max((length - n + last_row) // block + 1, 1))
            pages_needed += sum(min(PPB, -(-(length - j * block) // PAGE)) for j in range(blocks))
    assert on_dmas == row_copies + 2 * KVH * pages_needed
    assert on_dmas < off_dmas


def test_plan():
    _, plan = plan_spec(SPECS / "ragged_paged_attention.yaml")
    assert plan.lowering == "paged" and plan.grid == ["b", "kvh", "tq"]
    # the query heads of a K/V head are rows of the q block: each K/V block serves all of them
    assert plan.axes["g"].mode == "full" and "g" not in plan.pipeline_grid
    assert {op.tensor: op.memory for op in plan.inputs + plan.outputs} == {
        "q": "rows", "k_pages": "paged", "v_pages": "paged", "out": "rows",
    }
    assert plan.mask_skip is not None and "mask_skip" in format_plan(plan)


def test_lowers_for_tpu():
    _, plan = plan_spec(SPECS / "ragged_paged_attention.yaml")
    sizes = {"b": 8, "tq": 512, "kvh": 2, "g": 4, "t": 0, "d": 128, "pages": 16, "num_pages": 200, "page_size": 16}
    case = Case("lowering", sizes, maxima={"max_q_len": 128})
    assert "tpu_custom_call" in lower_for_tpu(checked_in_module("ragged_paged_attention"), plan, case)


def test_every_input_copied_in_by_rows_is_copied(tmp_path):
    """Two inputs of query rows (q, and a gate on the output): each is copied into VMEM
    and waited for, not only the last one named."""
    from codegen.verify import verify_built

    text = (SPECS / "ragged_paged_attention.yaml").read_text()
    text = text.replace("  out: {dims: [tq, kvh*g, d]", "  gate: {dims: [tq, kvh*g, d], dtype: bfloat16}\n  out: {dims: [tq, kvh*g, d]")
    text = text.replace("  out: acc / maximum(l, 1.0)", "  out: acc / maximum(l, 1.0) * gate")
    built = build_text(tmp_path, text)
    assert "gate_rows_copy.wait()" in built.source and "q_rows_copy.wait()" in built.source
    log = []
    assert verify_built(built, log=log.append), "\n".join(log)


# Ragged paged attention with a plain head axis: 'h' is a major dim of the pages and the
# second-to-last of q and out, which the entry point passes as [tq, h, 1, d].
PLAIN_HEADS = """\
name: ragged_paged_plain_heads
doc: Ragged paged attention without grouping or softmax, over plain heads.
axes:
  b: {}
  tq: {jagged: {offsets: cu_q_lens, segment: b, max: max_q_len}, block: 128}
  h: {}
  t: {paged: {table: page_indices, lengths: kv_lens, segment: b, page_size: 16}, block: 2}
  d: {max: 128}
  pages: {}
tensors:
  q: {dims: [tq, h, d], dtype: float32}
  k_pages: {dims: [h, t, d], dtype: float32}
  v_pages: {dims: [h, t, d], dtype: float32}
  kv_lens: {dims: [b], dtype: int32}
  page_indices: {dims: [b, pages], dtype: int32}
  cu_q_lens: {dims: [b+1], dtype: int32}
  out: {dims: [tq, h, d], dtype: float32}
compute:
  out: dot(dot(q, k_pages, over=d), v_pages, over=t)
"""


def test_rows_passed_with_a_unit_dim_are_copied_through_it(tmp_path):
    from codegen.verify import verify_built

    built = build_text(tmp_path, PLAIN_HEADS)
    assert {"q", "out"} <= set(built.plan.unit_major)
    assert "q_hbm_ref.at[tq_rows, h_index, 0]" in built.source
    log = []
    assert verify_built(built, log=log.append), "\n".join(log)


@pytest.mark.parametrize("chip", ["v5e", "v7x"])
def test_rows_passed_with_a_unit_dim_compile(tmp_path, chip):
    built = build_text(tmp_path, PLAIN_HEADS)
    assert_compiles(built, chip)
