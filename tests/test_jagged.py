"""Jagged kernels: GDPA with dense and with jagged K/V, both lowerings, every activation."""

import functools
import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from codegen.build import plan_spec
from codegen.errors import SpecError
from codegen.report import format_plan
from codegen.verify import Case, load_module, lower_for_tpu

from conftest import SPECS, build_text, checked_in_module

GDPA = (SPECS / "gdpa.yaml").read_text()
GDPA_JAGGED = (SPECS / "gdpa_jagged.yaml").read_text()
H, D, KV = 2, 128, 32
BLOCK = 16

ACTIVATIONS = {
    "raw": lambda x: x,
    "relu": lambda x: np.maximum(x, 0),
    "leaky_relu": lambda x: np.where(x >= 0, x, 0.01 * x),
    "gelu": lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
    "gelu_tanh": lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    "fast_gelu": lambda x: x * 0.5 * (1 + np.tanh(0.7978845608 * x * (1 + 0.044715 * x * x))),
    "silu": lambda x: x / (1 + np.exp(-x)),
    "relu_square": lambda x: np.maximum(x, 0) ** 2,
}

# Segment extents with every edge case: empty, 1, exactly a block, one past a block,
# the declared max (3 blocks), one short of a block.
LENGTHS = [0, 1, BLOCK, BLOCK + 1, 3 * BLOCK, 0, BLOCK - 1]
MAX = 3 * BLOCK
EDGE_CASES = {
    "mixed": LENGTHS,
    "single segment": [2 * BLOCK + 5],
    "all empty but one": [0, 0, MAX, 0],
    "all empty": [0, 0, 0],
}


def offsets(lengths):
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)


def bf16(rng, *shape, scale=1.0):
    return jnp.asarray(rng.standard_normal(shape) * scale, jnp.bfloat16)


def gdpa_reference(q, k, v, q_offsets, kv_offsets=None, activation="fast_gelu", qk_scale=1.0):
    """Per segment and head: cast_bf16(qk_scale * act(q k^T)) v, in float64."""
    q, k, v = (np.asarray(a, np.float32).astype(np.float64) for a in (q, k, v))
    out = np.zeros_like(q)
    for b in range(len(q_offsets) - 1):
        rows = slice(q_offsets[b], q_offsets[b + 1])
        kv = slice(kv_offsets[b], kv_offsets[b + 1]) if kv_offsets is not None else b
        s = np.einsum("qhd,khd->hqk", q[rows], k[kv])
        p = (qk_scale * ACTIVATIONS[activation](s)).astype(ml_dtypes.bfloat16).astype(np.float64)
        out[rows] = np.einsum("hqk,khd->qhd", p, v[kv])
    return out


def assert_close(out, want):
    out = np.asarray(out, np.float32).astype(np.float64)
    assert not np.isnan(out).any()
    assert out.shape == want.shape
    scale = max(1.0, np.abs(want).max(initial=0.0))
    err = np.abs(out - want).max(initial=0.0) / scale
    assert err < 2e-2, err


def dense_inputs(lengths, seed=0):
    rng = np.random.default_rng(seed)
    o = offsets(lengths)
    b = len(lengths)
    return bf16(rng, int(o[-1]), H, D, scale=0.3), bf16(rng, b, KV, H, D, scale=0.3), bf16(rng, b, KV, H, D), o


def jagged_inputs(q_lengths, kv_lengths, seed=0):
    rng = np.random.default_rng(seed)
    qo, ko = offsets(q_lengths), offsets(kv_lengths)
    return (bf16(rng, int(qo[-1]), H, D, scale=0.3), bf16(rng, int(ko[-1]), H, D, scale=0.3),
            bf16(rng, int(ko[-1]), H, D), qo, ko)


def variant(tmp_path, text, extra):
    name = text.split("\n", 1)[0].split(": ")[1]
    return load_module(build_text(tmp_path, text + extra).source, name)


# --- the plan ---------------------------------------------------------------------

def test_gdpa_plan():
    plan = plan_spec(SPECS / "gdpa.yaml")[1]
    assert {a: p.mode for a, p in plan.axes.items()} == {"b": "segment", "sq": "jagged", "skv": "full", "h": "full", "d": "full"}
    assert plan.lowering == "outer_pipeline" and plan.grid == [] and plan.pipeline_grid == ["b", "sq"]
    assert [plan.axes[a].semantics for a in plan.pipeline_grid] == ["parallel", "parallel"]
    # K and V are fetched once per segment, not once per q tile: their block follows b alone.
    assert plan.index_axes("k") == plan.index_axes("v") == ["b"]
    assert plan.reuse("k") == "fetched once per b, reused across sq steps"
    report = format_plan(plan)
    assert "fetched once per b, reused across sq steps" in report
    # real_tiles_only folds the segments and their q tiles into one axis over the real tiles
    assert "emit_pipeline grid: (real tiles of (b, cdiv(max_seq_len, block_sq))), semantics (parallel)" in report


def test_gdpa_jagged_plan_orders_kv_and_keeps_its_accumulator_in_scratch():
    plan = plan_spec(SPECS / "gdpa_jagged.yaml")[1]
    assert plan.pipeline_grid == ["b", "sq", "skv"]
    assert [plan.axes[a].semantics for a in plan.pipeline_grid] == ["parallel", "parallel", "arbitrary"]
    assert plan.accumulator_layouts == {"out_acc": (("h", False), ("sq", False), ("d", False))}
    assert plan.ir.accumulators["out_acc"].dtype == "float32"


def test_lowering_switch(tmp_path):
    outer = build_text(tmp_path, GDPA)
    grid = build_text(tmp_path, GDPA + "lowering: grid\n")
    assert (outer.plan.grid, outer.plan.pipeline_grid) == ([], ["b", "sq"])
    assert (grid.plan.grid, grid.plan.pipeline_grid) == (["b"], ["sq"])
    assert "b_index = pl.program_id(0)" in grid.source and "grid=(b,)," in grid.source
    assert "grid=(num_sq_visits,)" in outer.source and "pl.program_id" not in outer.source
    assert "the default" in outer.plan.lowering_reason and "from the spec" in grid.plan.lowering_reason


def test_lowering_only_applies_to_jagged_kernels(tmp_path):
    with pytest.raises(SpecError, match="lowering 'grid' does not apply to this kernel"):
        build_text(tmp_path, (SPECS / "exp.yaml").read_text() + "lowering: grid\n")


def test_deferred_mask_on_and_off(tmp_path):
    on = build_text(tmp_path, GDPA_JAGGED)
    off = build_text(tmp_path, GDPA_JAGGED + "rules:\n  deferred_mask: off\n")
    decision = lambda b: next(d for d in b.plan.decisions if d.rule == "deferred_mask")  # noqa: E731
    assert decision(on).applied and decision(on).subject == "v"
    assert not decision(off).applied and "rule off" in decision(off).reason
    assert on.plan.mask_at_load == {} and off.plan.mask_at_load == {"v": ("skv", 0.0)}
    assert "v_t_masked = _mask_tail(v_t, axis=1, start=skv_start, size=skv_size, fill=0.0)" in on.source
    assert "v = _mask_tail(v_ref[...], axis=0, start=skv_start, size=skv_size, fill=0.0)" in off.source


def test_deferred_mask_never_defers_when_the_axis_stays_major(tmp_path):
    # v's kv axis is major at the load and, with one batch axis and two free ones, still major after.
    text = (GDPA_JAGGED.replace("  d: {max: 128}", "  d: {max: 128}\n  g: {max: 8}")
            .replace("v: {dims: [skv, h, d]", "v: {dims: [skv, g, h, d]")
            .replace("out: {dims: [sq, h, d]", "out: {dims: [sq, h, g, d]"))
    built = build_text(tmp_path, text)
    decision = next(d for d in built.plan.decisions if d.rule == "deferred_mask")
    assert not decision.applied and "not from a major dim into the last two" in decision.reason
    assert built.plan.mask_at_load == {"v": ("skv", 0.0)}


def test_deferred_mask_gate_rejects_the_other_direction(monkeypatch):
    """A permutation that moves the masked axis out of the last two dims is never deferred."""
    import codegen.plan as plan_module
    from codegen.rules import DeferredMask

    plan = plan_spec(SPECS / "gdpa_jagged.yaml")[1]
    reverse = plan_module.PermutedLoad("v", "skv", 0.0, (("h", False), ("d", False), ("skv", False)), (2, 0, 1), "a dot")
    monkeypatch.setattr(plan_module, "permuted_masked_loads", lambda p: [reverse])
    plan.mask_at_load = {}
    [decision] = DeferredMask().apply(plan, True)
    assert not decision.applied and plan.mask_at_load == {"v": ("skv", 0.0)}


def test_deferred_mask_is_skipped_without_masked_loads():
    plan = plan_spec(SPECS / "gdpa.yaml")[1]
    [decision] = [d for d in plan.decisions if d.rule == "deferred_mask"]
    assert not decision.applied and "no load is masked" in decision.reason


# --- running the kernels --------------------------------------------------------

@pytest.mark.parametrize("case", EDGE_CASES, ids=list(EDGE_CASES))
def test_gdpa_edge_cases(nan_interpret, case):
    q, k, v, o = dense_inputs(EDGE_CASES[case])
    out = checked_in_module("gdpa").gdpa(q, k, v, o, max_seq_len=MAX, block_sq=BLOCK, interpret=nan_interpret)
    assert_close(out, gdpa_reference(q, k, v, o))


@pytest.mark.parametrize("extra", ["lowering: grid\n", "rules:\n  output_only: off\n", "lowering: grid\nrules:\n  invariant_load: off\n"])
def test_gdpa_variants(tmp_path, nan_interpret, extra):
    q, k, v, o = dense_inputs(LENGTHS, seed=1)
    module = variant(tmp_path, GDPA, extra)
    assert_close(module.gdpa(q, k, v, o, max_seq_len=MAX, block_sq=BLOCK, interpret=nan_interpret), gdpa_reference(q, k, v, o))


@pytest.mark.parametrize("case", EDGE_CASES, ids=list(EDGE_CASES))
def test_gdpa_jagged_edge_cases(nan_interpret, case):
    q_lengths = EDGE_CASES[case]
    kv_lengths = q_lengths[1:] + q_lengths[:1]  # kv extents differ from q's, including q rows with no kv
    q, k, v, qo, ko = jagged_inputs(q_lengths, kv_lengths)
    out = checked_in_module("gdpa_jagged").gdpa_jagged(
        q, k, v, qo, ko, max_seq_len_q=MAX, max_seq_len_kv=MAX, block_sq=BLOCK, block_skv=BLOCK, interpret=nan_interpret
    )
    want = gdpa_reference(q, k, v, qo, ko)
    assert_close(out, want)


def test_gdpa_jagged_segment_without_kv_rows_gives_zeros(nan_interpret):
    run = functools.partial(
        checked_in_module("gdpa_jagged").gdpa_jagged,
        max_seq_len_q=MAX, max_seq_len_kv=MAX, block_sq=BLOCK, block_skv=BLOCK, interpret=nan_interpret,
    )
    q, k, v, qo, ko = jagged_inputs([5, BLOCK + 1, 3], [4, 0, 7])
    out = np.asarray(run(q, k, v, qo, ko), np.float32)
    assert (out[qo[1]:qo[2]] == 0).all() and np.abs(out[: qo[1]]).max() > 0
    q, k, v, qo, ko = jagged_inputs([3, 17], [0, 0])  # no kv rows at all
    out = np.asarray(run(q, k, v, qo, ko), np.float32)
    assert out.shape == (20, H, D) and (out == 0).all()


@pytest.mark.parametrize("extra", ["lowering: grid\n", "rules:\n  deferred_mask: off\n", "rules:\n  invariant_load: off\n"])
def test_gdpa_jagged_variants(tmp_path, nan_interpret, extra):
    q, k, v, qo, ko = jagged_inputs(LENGTHS, LENGTHS[::-1], seed=2)
    module = variant(tmp_path, GDPA_JAGGED, extra)
    out = module.gdpa_jagged(q, k, v, qo, ko, max_seq_len_q=MAX, max_seq_len_kv=MAX, block_sq=BLOCK, block_skv=BLOCK, interpret=nan_interpret)
    assert_close(out, gdpa_reference(q, k, v, qo, ko))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_each_activation_matches_its_formula(tmp_path, nan_interpret, activation):
    from codegen.build import build_source
    from conftest import write_spec

    built = build_source(write_spec(tmp_path, GDPA), {"activation": activation, "qk_scale": 0.5})
    module = load_module(built.source, "gdpa")
    q, k, v, o = dense_inputs([3, BLOCK + 2], seed=3)
    out = module.gdpa(q, k, v, o, max_seq_len=2 * BLOCK, block_sq=BLOCK, interpret=nan_interpret)
    assert_close(out, gdpa_reference(q, k, v, o, activation=activation, qk_scale=0.5))
    assert "QK_SCALE = 0.5" in built.source


def test_unknown_activation_lists_the_valid_ones(tmp_path):
    with pytest.raises(SpecError, match="'swish', which is not an activation") as err:
        build_text(tmp_path, GDPA.replace("activation: fast_gelu", "activation: swish"))
    assert "fast_gelu" in err.value.hint and "relu_square" in err.value.hint
    with pytest.raises(SpecError, match="<command line>"):
        build_text(tmp_path, GDPA, overrides={"activation": "swish"})


def test_activation_callable_directly(tmp_path, nan_interpret):
    module = variant(tmp_path, GDPA.replace("activation(s)", "silu(s)"), "")
    q, k, v, o = dense_inputs([7, 9], seed=4)
    out = module.gdpa(q, k, v, o, max_seq_len=BLOCK, block_sq=BLOCK, interpret=nan_interpret)
    assert_close(out, gdpa_reference(q, k, v, o, activation="silu"))


# --- lowering for TPU -------------------------------------------------------------

def _lowering_case(jagged):
    sizes = {"b": 4, "sq": 4 * 1024, "skv": 4 * 512 if jagged else 256, "h": 8, "d": 128}
    maxima = {"max_seq_len_q": 2048, "max_seq_len_kv": 1024} if jagged else {"max_seq_len": 2048}
    return Case("lowering", sizes, maxima=maxima)


@pytest.mark.parametrize("name", ["gdpa", "gdpa_jagged"])
@pytest.mark.parametrize("extra", ["", "lowering: grid\n", "rules:\n  deferred_mask: off\n"])
def test_lowers_for_tpu(tmp_path, name, extra):
    text = (SPECS / f"{name}.yaml").read_text() + extra
    built = build_text(tmp_path, text)
    module = load_module(built.source, name)
    assert "tpu_custom_call" in lower_for_tpu(module, built.plan, _lowering_case(name == "gdpa_jagged"))


# --- spec errors specific to jagged axes ------------------------------------------

@pytest.mark.parametrize(
    "old, new, message",
    [
        ("q_offsets: {dims: [b+1], dtype: int32}", "q_offsets: {dims: [b+1], dtype: int16}", "must be int32 with dims \\[b\\+1\\]"),
        ("segment: b, max", "segment: bb, max", "unknown segment axis 'bb'"),
        ("{offsets: q_offsets,", "{offsets: q_offs,", "unknown offsets tensor 'q_offs'"),
        ("max: max_seq_len}, block: 256}", "max: max_seq_len}}", "jagged axis 'sq' needs a block"),
        ("q_offsets: {dims: [b+1]", "q_offsets: {dims: [b]", "must be int32 with dims \\[b\\+1\\]"),
        ("  out: dot(p, v, over=skv)", "  out: dot(p, v, over=skv) + q_offsets", "holds segment offsets"),
    ],
)
def test_jagged_spec_errors(tmp_path, old, new, message):
    assert old in GDPA
    with pytest.raises(SpecError, match=message):
        build_text(tmp_path, GDPA.replace(old, new))
