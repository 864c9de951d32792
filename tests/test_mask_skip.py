"""mask_skip: tiles a where() mask leaves empty skip their compute and fetch no blocks."""

import sys

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from codegen.build import plan_spec
from codegen.masks import Affine, Comparison, Condition, holds_somewhere
from codegen.report import format_plan
from codegen.verify import Case, load_module, lower_for_tpu

from conftest import ROOT, SPECS, build_text, checked_in_module, with_rule

# Without its tune entries, whose rule switches would take the place of the ones tested here.
CAUSAL = (SPECS / "causal_attention.yaml").read_text().split("\ntune:")[0] + "\n"
CAUSAL_MASK = "where(index(skv) <= index(sq), "
# A row may see no key in a whole tile (before its window starts): its running max starts
# finite, so that exp(m - m_next) is 1 there rather than exp(-inf + inf).
FINITE_START = "init: -1.0e+30}      # running row max"
WINDOWED = CAUSAL.replace(CAUSAL_MASK, "where((index(skv) <= index(sq)) & (index(skv) > index(sq) - 12), ").replace(
    "init: -.inf}      # running row max", FINITE_START
)
ANTI_CAUSAL = CAUSAL.replace(CAUSAL_MASK, "where(index(skv) >= index(sq), ").replace(
    "init: -.inf}      # running row max", FINITE_START
)
BLOCK, S, D = 8, 27, 128  # four tiles of 8, the last with 3 rows


def attention_reference(q, k, v, allowed):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    s = np.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(q.shape[-1])
    s = np.where(allowed(np.arange(q.shape[2])[:, None], np.arange(k.shape[2])[None, :]), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("bhqk,bhkd->bhqd", p / p.sum(-1, keepdims=True), v)


MASKS = {
    "causal": (CAUSAL, lambda i, j: j <= i),
    "windowed": (WINDOWED, lambda i, j: (j <= i) & (j > i - 12)),
    "anti-causal": (ANTI_CAUSAL, lambda i, j: j >= i),
}


def qkv(seed=0, s=S):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal((2, 3, s, D)), jnp.float32) for _ in range(3)]


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("rule", ["on", "off"])
def test_masked_attention_matches_numpy(tmp_path, nan_interpret, mask, rule):
    text, allowed = MASKS[mask]
    if rule == "off":
        text = with_rule(text, "mask_skip", "false")
    built = build_text(tmp_path, text)
    assert (built.plan.mask_skip is not None) == (rule == "on")
    q, k, v = qkv()
    mod = load_module(built.source, "causal_attention")
    got = np.asarray(mod.causal_attention(q, k, v, block_sq=BLOCK, block_skv=BLOCK, interpret=nan_interpret))
    np.testing.assert_allclose(got, attention_reference(q, k, v, allowed), atol=2e-5)


def _kv_block_copies(module, s):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from dma_traffic import counting_traffic, interpret_params

    q, k, v = qkv(1, s)
    with counting_traffic() as traffic:
        module.causal_attention(q, k, v, block_sq=BLOCK, block_skv=BLOCK, interpret=interpret_params(traffic))
    return traffic


def test_variants_changed_what_they_meant_to():
    assert WINDOWED.count(FINITE_START) == ANTI_CAUSAL.count(FINITE_START) == 1
    assert CAUSAL_MASK not in WINDOWED and CAUSAL_MASK not in ANTI_CAUSAL


def _fetches(indices):
    """Blocks a pipeline fetches for a sequence of block indices: one each time it changes."""
    return sum(1 for i, x in enumerate(indices) if i == 0 or x != indices[i - 1])


def test_skipped_tiles_fetch_no_blocks(tmp_path):
    """With the rule, q tile i asks for K/V blocks 0..i, then repeats block i: no fetch.
    With snake_order too, even q tiles walk back from block i - 1, where the tile before
    ended, then i, then down to 0, where the odd tile after starts: every tile after the
    first reuses a block, the fewest fetches two buffers allow."""
    n, heads = 4, 2 * 3
    on = _kv_block_copies(load_module(build_text(tmp_path, CAUSAL).source, "causal_attention"), n * BLOCK)
    forward = load_module(build_text(tmp_path, with_rule(CAUSAL, "snake_order", "off")).source, "causal_attention")
    forward = _kv_block_copies(forward, n * BLOCK)
    off_source = build_text(tmp_path, with_rule(with_rule(CAUSAL, "mask_skip", "false"), "snake_order", "off")).source
    off = _kv_block_copies(load_module(off_source, "causal_attention"), n * BLOCK)
    q_and_out = 2 * heads * n
    clamped = _fetches([min(j, i) for i in range(n) for j in range(n)])
    assert clamped == n * (n + 1) // 2 - 1  # q tile 1 starts on block 0, where q tile 0 stayed

    def snake_walk(i, j):
        if i % 2:
            return min(j, i)
        block = min(n - 1 - j, i)
        return {i: i - 1, i - 1: i}.get(block, block) if i else block

    snake = _fetches([snake_walk(i, j) for i in range(n) for j in range(n)])
    assert snake == n * (n + 1) // 2 - (n - 1)  # one reuse at each of the n - 1 tile changes
    assert off.block_copies == q_and_out + 2 * heads * _fetches([j for i in range(n) for j in range(n)])
    assert forward.block_copies == q_and_out + 2 * heads * clamped
    assert on.block_copies == q_and_out + 2 * heads * snake
    assert on.grid_steps == off.grid_steps  # the grid is the same; the work and the DMAs are not


def test_plan_reports_the_rule_and_the_fraction_skipped():
    _, plan = plan_spec(SPECS / "causal_attention.yaml")
    text = format_plan(plan)
    assert "mask_skip" in text and "47% of the (skv, sq) tiles" in text
    assert plan.mask_skip.axis == "skv"


def test_a_mask_that_is_not_affine_is_not_skipped(tmp_path):
    built = build_text(tmp_path, CAUSAL.replace(CAUSAL_MASK, "where(dot(q, k, over=d) > 0, "))
    assert built.plan.mask_skip is None
    (decision,) = [d for d in built.plan.decisions if d.rule == "mask_skip"]
    assert not decision.applied and "not a comparison of affine expressions" in decision.reason


def test_a_fill_that_contributes_is_not_skipped(tmp_path):
    built = build_text(tmp_path, CAUSAL.replace(", -inf)", ", -1.0)"))
    assert built.plan.mask_skip is None


def test_condition_bounds_over_a_tile():
    # index(sq) - index(skv) >= 0: live unless the whole skv tile lies after the sq tile
    cond = Condition(((Comparison(Affine.of({("index", "sq"): 1, ("index", "skv"): -1}), ">="),),))
    assert holds_somewhere(cond, {"sq": (0, 7), "skv": (0, 7)}, {})
    assert holds_somewhere(cond, {"sq": (8, 15), "skv": (0, 7)}, {})
    assert not holds_somewhere(cond, {"sq": (0, 7), "skv": (8, 15)}, {})


def test_causal_attention_lowers_for_tpu():
    _, plan = plan_spec(SPECS / "causal_attention.yaml")
    case = Case("lowering", {"batch": 1, "head": 2, "sq": 2048, "skv": 2048, "d": 128})
    assert "tpu_custom_call" in lower_for_tpu(checked_in_module("causal_attention"), plan, case)


# --- HSTU: the same rule on jagged axes, in the pipeline lowering ----------------------------

HSTU_BLOCK = 16  # bf16 rows
HSTU_SEGMENTS = {
    "edges": [0, 1, HSTU_BLOCK, HSTU_BLOCK + 1, 3 * HSTU_BLOCK - 1, 0, 3 * HSTU_BLOCK, 5],
    "all empty but one": [0, 0, 3 * HSTU_BLOCK, 0],
}


def hstu_reference(q, k, v, offsets, max_seq_len, alpha=0.125):
    q, k, v = (np.asarray(a, np.float32).astype(np.float64) for a in (q, k, v))
    out = np.zeros_like(q)
    for b in range(len(offsets) - 1):
        rows = slice(offsets[b], offsets[b + 1])
        n = offsets[b + 1] - offsets[b]
        s = np.einsum("ihd,jhd->hij", q[rows], k[rows])
        p = s * alpha / (1 + np.exp(-s * alpha)) / max_seq_len
        p = np.where(np.tril(np.ones((n, n), bool))[None], p, 0.0)
        p = p.astype(ml_dtypes.bfloat16).astype(np.float64)
        out[rows] = np.einsum("hij,jhd->ihd", p, v[rows])
    return out


@pytest.mark.parametrize("segments", HSTU_SEGMENTS)
def test_hstu_matches_numpy(nan_interpret, segments):
    lengths = HSTU_SEGMENTS[segments]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    rng = np.random.default_rng(3)
    q, k, v = (jnp.asarray(rng.standard_normal((int(offsets[-1]), 2, 128)), jnp.bfloat16) for _ in range(3))
    got = checked_in_module("hstu").hstu(
        q, k, v, jnp.asarray(offsets), max_seq_len=3 * HSTU_BLOCK, block_sq=HSTU_BLOCK, block_skv=HSTU_BLOCK,
        interpret=nan_interpret,
    )
    want = hstu_reference(q, k, v, offsets, 3 * HSTU_BLOCK)
    got = np.asarray(got, np.float32)
    assert not np.isnan(got).any()
    np.testing.assert_allclose(got, want, atol=2e-2 * np.abs(want).max(), rtol=2e-2)


def test_hstu_plan_skips_and_lowers_for_tpu():
    _, plan = plan_spec(SPECS / "hstu.yaml")
    assert plan.mask_skip is not None and plan.mask_skip.axis == "skv"
    assert plan.lowering == "outer_pipeline"
    case = Case("lowering", {"b": 4, "sq": 4096, "skv": 4096, "h": 8, "d": 128}, maxima={"max_seq_len": 2048})
    assert "tpu_custom_call" in lower_for_tpu(checked_in_module("hstu"), plan, case)


# Bottom-right aligned, windowed attention: more keys than queries, and a window width that
# is a float param, so the live range needs both clamps and integer block indices.
SLIDING = (ROOT / "tests" / "specs" / "sliding_window.yaml").read_text()


def test_sliding_window_with_more_keys_than_queries(tmp_path, nan_interpret):
    built = build_text(tmp_path, SLIDING)
    assert built.plan.mask_skip is not None
    assert "jnp.int32(" in built.source  # the clamp of a float window is an integer block index
    rng = np.random.default_rng(4)
    sq, skv, window = 19, 35, 12.0
    q = jnp.asarray(rng.standard_normal((2, sq, D)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((2, skv, D)), jnp.float32) for _ in range(2))
    got = np.asarray(
        load_module(built.source, "sliding_window").sliding_window(q, k, v, block_sq=BLOCK, block_skv=BLOCK, interpret=nan_interpret)
    )
    i = np.arange(sq)[:, None] + skv - sq  # query row i sits at key position i + skv - sq
    j = np.arange(skv)[None, :]
    allowed = (j <= i) & (j > i - window)
    s = np.einsum("bqd,bkd->bqk", np.asarray(q, np.float64), np.asarray(k, np.float64))
    s = np.where(allowed, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    want = np.einsum("bqk,bkd->bqd", p / p.sum(-1, keepdims=True), np.asarray(v, np.float64))
    np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize("block_sq, block_skv", [(24, 8), (8, 24), (16, 8)])
def test_snake_order_with_unequal_blocks_and_tails(nan_interpret, block_sq, block_skv):
    """The backward walk's first block comes from the mask's last live block, which may lie
    past the keys' end (q tiles of 24 rows over 61 keys): it is bounded by the last block."""
    q, k, v = qkv(2, 61)
    got = checked_in_module("causal_attention").causal_attention(
        q, k, v, block_sq=block_sq, block_skv=block_skv, interpret=nan_interpret
    )
    np.testing.assert_allclose(np.asarray(got), attention_reference(q, k, v, lambda i, j: j <= i), atol=2e-5)
