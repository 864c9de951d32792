"""Paged attention: block-table prefetch, double-buffered K/V, one semaphore per slot."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from codegen.build import plan_spec
from codegen.report import format_plan
from codegen.verify import Case, load_module, lower_for_tpu

from conftest import ROOT, SPECS, build_text, checked_in_module

sys.path.insert(0, str(ROOT / "benchmarks"))
from dma_traffic import counting_traffic, interpret_params  # noqa: E402

PAGED = (SPECS / "paged_attention.yaml").read_text()
PAGE, PAGES_PER_SEQ, D = 16, 8, 128
MAX = PAGE * PAGES_PER_SEQ
EDGE_LENGTHS = [0, 1, PAGE, PAGE + 1, 4 * PAGE + 1, MAX]


def make_inputs(lengths, kv_heads, groups, seed=0, extra_pages=5):
    rng = np.random.default_rng(seed)
    b = len(lengths)
    total = b * PAGES_PER_SEQ + extra_pages
    table = rng.permutation(total)[: b * PAGES_PER_SEQ].reshape(b, PAGES_PER_SEQ).astype(np.int32)  # shuffled
    q = jnp.asarray(rng.standard_normal((b, kv_heads * groups, D)), jnp.bfloat16)
    k = jnp.asarray(rng.standard_normal((kv_heads, total, PAGE, D)), jnp.bfloat16)
    v = jnp.asarray(rng.standard_normal((kv_heads, total, PAGE, D)), jnp.bfloat16)
    return q, k, v, np.asarray(lengths, np.int32), table


def reference(q, k, v, lengths, table):
    """Softmax over each sequence's first lengths[b] positions, gathered page by page; no scaling."""
    q, k, v = (np.asarray(a, np.float32).astype(np.float64) for a in (q, k, v))
    b, hq, _ = q.shape
    groups = hq // k.shape[0]
    out = np.zeros_like(q)
    for i in range(b):
        pos = np.arange(lengths[i])
        pages, rows = table[i, pos // PAGE], pos % PAGE
        for h in range(hq):
            keys, values = k[h // groups, pages, rows], v[h // groups, pages, rows]
            if len(pos):
                s = keys @ q[i, h]
                p = np.exp(s - s.max())
                out[i, h] = (p / p.sum()) @ values
    return out


def close(out, want, tol=2e-2):
    out = np.asarray(out, np.float32).astype(np.float64)
    assert not np.isnan(out).any(), "NaN: a slot was read before its pages landed"
    assert np.abs(out - want).max() / max(1.0, np.abs(want).max()) < tol


def run(module, inputs, interpret, block=4):
    return module.paged_attention(*map(jnp.asarray, inputs), pages_per_compute_block=block, interpret=interpret)


# --- the plan -------------------------------------------------------------------

def test_plan_shows_prefetch_slots_and_semaphores():
    plan = plan_spec(SPECS / "paged_attention.yaml")[1]
    assert plan.lowering == "paged" and plan.grid == ["b", "kvh"]
    assert [plan.axes[a].semantics for a in plan.grid] == ["arbitrary", "arbitrary"]
    assert {op.tensor: op.memory for op in plan.inputs} == {"q": "blocked", "k_pages": "paged", "v_pages": "paged"}
    assert plan.paged_slots == 2 and plan.paged_prefetch and plan.semaphore_per_slot
    # q changes block every grid step: its second buffer overlaps the next step's fetch.
    [q_decision] = [d for d in plan.decisions if d.rule == "invariant_load" and d.subject == "q"]
    assert not q_decision.applied and next(op for op in plan.inputs if op.tensor == "q").buffers == 2
    report = format_plan(plan)
    for needle in ("scalar prefetch (SMEM): lengths, page_indices; each page id is read once per block",
                   "the next block's DMAs (maybe of the next grid step) start before this block is computed on",
                   "pages DMA'd into 2 VMEM slots, a DMA semaphore per slot"):
        assert needle in report


def test_rules_off_change_the_plan_and_the_code(tmp_path):
    on = build_text(tmp_path, PAGED)
    shared = build_text(tmp_path, PAGED + "rules:\n  slot_semaphores: off\n")
    serial = build_text(tmp_path, PAGED + "rules:\n  paged_prefetch: off\n")
    assert on.source.count("pltpu.SemaphoreType.DMA((2,))") == 2 and "k_pages_sems.at[slot]" in on.source
    assert not shared.plan.semaphore_per_slot and "k_pages_sems.at[slot]" not in shared.source
    assert shared.source.count("pltpu.SemaphoreType.DMA(())") == 2
    assert serial.plan.paged_slots == 1 and not serial.plan.paged_prefetch
    assert "next_block" not in serial.source and "_prefetch_next_block" in on.source
    skipped = [d for d in serial.plan.decisions if d.rule == "slot_semaphores"]
    assert skipped and not skipped[0].applied


def test_each_page_id_is_read_once_per_block():
    kernel = (ROOT / "generated" / "paged_attention.py").read_text().split("def paged_attention(")[0]
    assert kernel.count("page_indices_ref[") == 1  # start_fetch reads it; waits and V reuse it


# --- running it -------------------------------------------------------------------

@pytest.mark.parametrize("kv_heads, groups", [(2, 2), (1, 4), (4, 1), (1, 8)], ids=["gqa2", "gqa4", "mha", "mqa8"])
def test_matches_numpy(nan_interpret, kv_heads, groups):
    inputs = make_inputs(EDGE_LENGTHS, kv_heads, groups)
    close(run(checked_in_module("paged_attention"), inputs, nan_interpret), reference(*inputs))


@pytest.mark.parametrize("block", [1, 2, 8])
def test_other_block_sizes(nan_interpret, block):
    inputs = make_inputs([3, 0, MAX, PAGE * 3 - 1], 2, 2, seed=block)
    close(run(checked_in_module("paged_attention"), inputs, nan_interpret, block=block), reference(*inputs))


def test_matches_jax_paged_attention():
    from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention

    inputs = make_inputs(EDGE_LENGTHS, 2, 4, seed=7)
    params = pltpu.InterpretParams(uninitialized_memory="nan")
    ours = np.asarray(run(checked_in_module("paged_attention"), inputs, params), np.float32)
    with pltpu.force_tpu_interpret_mode(params):
        theirs = np.asarray(paged_attention(*map(jnp.asarray, inputs), pages_per_compute_block=4), np.float32)
    np.testing.assert_allclose(ours, theirs, rtol=1e-2, atol=1e-2)
    close(ours, reference(*inputs))


def test_no_race_with_a_semaphore_per_slot():
    from jax._src.pallas.mosaic.interpret import interpret_pallas_call as interpreter

    inputs = make_inputs(EDGE_LENGTHS, 2, 2, seed=3)
    params = pltpu.InterpretParams(uninitialized_memory="nan", detect_races=True)
    out = run(checked_in_module("paged_attention"), inputs, params)
    assert interpreter.races is not None and interpreter.races.races_found is False
    close(out, reference(*inputs))


def test_a_shared_semaphore_lets_a_slot_be_read_before_its_pages_land(tmp_path):
    """The check that proves slot safety can fail: with one semaphore for both slots, a wait
    for this block is satisfied by the prefetch of the next one. The interpreter runs a DMA
    only when a wait needs it (newest first), so the block is read while still unwritten,
    which the NaN fill makes visible. The per-slot kernel passes the same check above."""
    shared = load_module(build_text(tmp_path, PAGED + "rules:\n  slot_semaphores: off\n").source, "paged_attention")
    inputs = make_inputs(EDGE_LENGTHS, 2, 2, seed=3)
    params = pltpu.InterpretParams(uninitialized_memory="nan", dma_execution_mode="on_wait")
    out = np.asarray(run(shared, inputs, params), np.float32)
    assert np.isnan(out).any()
    safe = np.asarray(run(checked_in_module("paged_attention"), inputs, params), np.float32)
    close(safe, reference(*inputs))


def test_without_prefetch_it_still_matches(tmp_path, nan_interpret):
    serial = load_module(build_text(tmp_path, PAGED + "rules:\n  paged_prefetch: off\n").source, "paged_attention")
    inputs = make_inputs(EDGE_LENGTHS, 2, 2, seed=4)
    close(run(serial, inputs, nan_interpret), reference(*inputs))


def test_dmas_touch_only_pages_below_each_length():
    """Zero-length sequences issue no DMA, no page past lengths[b] is read, each needed page once."""
    lengths = [0, 5, PAGE, 0, PAGE + 1, MAX, 0]
    inputs = make_inputs(lengths, 2, 2, seed=5)
    with counting_traffic() as traffic:
        out = run(checked_in_module("paged_attention"), inputs, interpret_params(traffic))
    pages = sum(-(-n // PAGE) for n in lengths)
    assert traffic.dmas == 2 * 2 * pages  # K and V, for each K/V head
    assert traffic.hbm_to_vmem == 2 * 2 * pages * PAGE * D * 2 + np.asarray(inputs[0]).nbytes
    assert traffic.grid_steps == len(lengths) * 2
    close(out, reference(*inputs))


def test_lowers_for_tpu(tmp_path):
    for extra in ("", "rules:\n  paged_prefetch: off\n"):
        built = build_text(tmp_path, PAGED + extra)
        module = load_module(built.source, "paged_attention")
        sizes = {"b": 8, "kvh": 8, "g": 4, "d": 128, "pages": 64, "num_pages": 1024, "page_size": 16, "t": 1024}
        assert "tpu_custom_call" in lower_for_tpu(module, built.plan, Case("lowering", sizes))


def test_entry_point_splits_and_checks_the_query_heads():
    module = checked_in_module("paged_attention")
    q, k, v, lengths, table = make_inputs([3], 2, 2)
    with pytest.raises(ValueError, match=r"q: dim 1 \(3\) must be a multiple of kvh \(2\)"):
        module.paged_attention(q[:, :3], k, v, lengths, table)
    with pytest.raises(ValueError, match=r"lengths: expected int32\[1\], got int32\[2\]"):
        module.paged_attention(q, k, v, np.zeros(2, np.int32), table)


def test_query_heads_of_a_kv_head_share_each_kv_block_as_rows():
    """The g query heads of a K/V head are rows of one q block, not a grid axis: each K/V
    block is fetched once for all of them and multiplied with them in one dot (no batch
    dims), so K/V traffic does not grow with g."""
    plan = plan_spec(SPECS / "paged_attention.yaml")[1]
    assert "g" not in plan.grid + plan.pipeline_grid and plan.axes["g"].mode == "full"
    assert "s = lax.dot_general(\n            q, k_pages, (((1,), (1,)), ((), ()))" in checked_in_module_source("paged_attention")
    lengths = [0, 5, PAGE + 1, MAX]
    kv_bytes, steps = {}, {}
    for groups in (1, 4):
        inputs = make_inputs(lengths, 2, groups, seed=6)
        with counting_traffic() as traffic:
            out = run(checked_in_module("paged_attention"), inputs, interpret_params(traffic))
        close(out, reference(*inputs))
        kv_bytes[groups] = traffic.hbm_to_vmem - np.asarray(inputs[0]).nbytes
        steps[groups] = traffic.grid_steps
    pages = sum(-(-n // PAGE) for n in lengths)
    assert kv_bytes[1] == kv_bytes[4] == 2 * 2 * pages * PAGE * D * 2  # K and V, per K/V head, bf16
    assert steps[1] == steps[4] == len(lengths) * 2


def checked_in_module_source(name):
    return (ROOT / "generated" / f"{name}.py").read_text()
