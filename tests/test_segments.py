"""Reductions over a jagged axis: per-segment sums and means, under both jagged lowerings,
in TPU interpret mode on CPU against numpy written from the math."""

import sys

import numpy as np
import pytest

from codegen.verify import Case, load_module, lower_for_tpu

from conftest import ROOT, SPECS, build_text, checked_in_module

sys.path.insert(0, str(ROOT / "benchmarks"))
from dma_traffic import counting_traffic, interpret_params  # noqa: E402

BLOCK_T = 8
MAX = 3 * BLOCK_T  # three tiles of t per segment at most
D = 200  # whole in each block, not a multiple of 128
# empty, 1, a block, one past a block, the max, one short of the max, one short of a block
EDGE_CASES = {
    "mixed": [0, 1, BLOCK_T, BLOCK_T + 1, MAX, 0, MAX - 1, BLOCK_T - 1],
    "single segment": [MAX - 1],
    "all empty but one": [0, 0, MAX, 0],
    "all empty": [0, 0, 0],
}


def offsets(lengths):
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)


def inputs(lengths, d=D, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((int(sum(lengths)), d)).astype(np.float32), offsets(lengths)


def segment_sums(x, o):
    x = x.astype(np.float64)
    return np.stack([x[o[b]:o[b + 1]].sum(axis=0) for b in range(len(o) - 1)]) if len(o) > 1 else np.zeros((0, x.shape[1]))


def close(got, want, tol=1e-4):
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape
    assert not np.isnan(got).any(), "NaN in output: a read of uninitialized memory reached it"
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def lowerings(name):
    text = (SPECS / f"{name}.yaml").read_text()
    return {"outer_pipeline": text, "grid": text + "lowering: grid\n"}


@pytest.mark.parametrize("lowering", ["outer_pipeline", "grid"])
@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_segment_sum(tmp_path, nan_interpret, case, lowering):
    module = load_module(build_text(tmp_path, lowerings("segment_sum")[lowering]).source, "segment_sum")
    x, o = inputs(EDGE_CASES[case])
    out = module.segment_sum(x, o, max_seq_len=MAX, block_t=BLOCK_T, interpret=nan_interpret)
    close(out, segment_sums(x, o))


@pytest.mark.parametrize("lowering", ["outer_pipeline", "grid"])
@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_segment_mean(tmp_path, nan_interpret, case, lowering):
    module = load_module(build_text(tmp_path, lowerings("segment_mean")[lowering]).source, "segment_mean")
    x, o = inputs(EDGE_CASES[case], seed=1)
    out = module.segment_mean(x, o, max_seq_len=MAX, block_t=BLOCK_T, interpret=nan_interpret)
    counts = np.maximum(np.diff(o), 1)[:, None]
    close(out, segment_sums(x, o) / counts)


def test_checked_in_segment_kernels_with_default_blocks(nan_interpret):
    lengths = [300, 0, 1, 511, 257]
    x, o = inputs(lengths, d=700)
    out = checked_in_module("segment_sum").segment_sum(x, o, max_seq_len=512, interpret=nan_interpret)
    close(out, segment_sums(x, o), tol=3e-4)
    out = checked_in_module("segment_mean").segment_mean(x, o, max_seq_len=512, interpret=nan_interpret)
    close(out, segment_sums(x, o) / np.maximum(np.diff(o), 1)[:, None])


def test_an_empty_segment_sums_to_zero_not_to_stale_data(nan_interpret):
    """With uninitialized memory NaN, an empty segment that skipped its init would show NaN."""
    x, o = inputs([0, MAX, 0])
    out = np.asarray(checked_in_module("segment_sum").segment_sum(
        x, o, max_seq_len=MAX, block_t=BLOCK_T, interpret=nan_interpret))
    assert (out[0] == 0).all() and (out[2] == 0).all() and np.abs(out[1]).sum() > 0


@pytest.mark.parametrize("name", ["segment_sum", "segment_mean"])
def test_lowers_for_tpu(name):
    from codegen.build import plan_spec

    plan = plan_spec(SPECS / f"{name}.yaml")[1]
    module = checked_in_module(name)
    lengths = [0, 1, 512, 511]
    case = Case("t", {"t": sum(lengths), "b": len(lengths), "d": 1024}, {"t": lengths}, {"max_seq_len": 512})
    assert "tpu_custom_call" in lower_for_tpu(module, plan, case)


def test_extent_means_the_same_in_the_reference():
    """extent(t) is each segment's own row count in the reference too, as in the kernel."""
    from codegen.build import plan_spec
    from codegen.reference import reference

    plan = plan_spec(SPECS / "segment_mean.yaml")[1]
    lengths = EDGE_CASES["mixed"]
    x, o = inputs(lengths, seed=2)
    sizes = {"t": int(o[-1]), "b": len(lengths), "d": D, "max_seq_len": MAX}
    got = reference(plan.ir, {"x": x, "offsets": o}, sizes)["out"]
    close(got, segment_sums(x, o) / np.maximum(np.diff(o), 1)[:, None])


@pytest.mark.parametrize("lowering", ["outer_pipeline", "grid"])
def test_segment_sum_reads_each_input_byte_once(tmp_path, lowering):
    """Over-launched tiles (past a segment's end) move no data; the output is written once."""
    module = load_module(build_text(tmp_path, lowerings("segment_sum")[lowering]).source, "segment_sum")
    x, o = inputs(EDGE_CASES["mixed"], seed=3)
    with counting_traffic() as traffic:
        out = module.segment_sum(x, o, max_seq_len=MAX, block_t=BLOCK_T, interpret=interpret_params(traffic))
    close(out, segment_sums(x, o))
    assert traffic.hbm_to_vmem == x.nbytes
    assert traffic.vmem_to_hbm == np.asarray(out).nbytes
