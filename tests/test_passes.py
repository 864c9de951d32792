"""A reduction used elementwise against its own tiled axis, walked in passes.

When the axis is not held whole (`keep_whole` off, or its `max` too long for VMEM), the
ordered axis is walked once per level of reductions that read the previous level's
results, then once more to write: softmax takes three passes, layernorm three.
"""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from codegen.build import build_source
from codegen.report import format_plan
from codegen.verify import load_module

from conftest import build_text

TEST_SPECS = Path(__file__).parent / "specs"


def built(name, text_edit=None, tmp_path=None):
    path = TEST_SPECS / f"{name}.yaml"
    if text_edit is None:
        return build_source(path)
    return build_text(tmp_path, text_edit(path.read_text()))


def module(b, name):
    return load_module(b.source, name)


def softmax(x, axis):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# three tiles and a tail on both axes (blocks 8 and 128), one tile, and one short of a tile
@pytest.mark.parametrize("m, n", [(19, 300), (8, 128), (7, 127)])
def test_dense_softmax_in_passes_matches_numpy(nan_interpret, m, n):
    b = built("softmax_in_passes")
    assert b.plan.ir.passes == 3 and b.plan.axes["n"].mode == "tiled"
    x = np.random.default_rng(m * n).standard_normal((m, n)).astype(np.float32) * 4
    got = np.asarray(module(b, "softmax_in_passes").softmax_in_passes(jnp.asarray(x), interpret=nan_interpret))
    np.testing.assert_allclose(got, softmax(x, 1), atol=2e-6)


def test_passes_and_whole_rows_agree(tmp_path, nan_interpret):
    """The rule changes the plan, not the result: the same spec with keep_whole on holds
    the rows whole, and both give the same softmax."""
    whole = built("softmax_in_passes", lambda t: t.replace("rules: {keep_whole: off}\n", ""), tmp_path)
    assert whole.plan.ir.passes == 1 and whole.plan.axes["n"].mode == "full"
    passes = built("softmax_in_passes")
    x = jnp.asarray(np.random.default_rng(0).standard_normal((24, 389)).astype(np.float32))
    a = module(whole, "softmax_in_passes").softmax_in_passes(x, interpret=nan_interpret)
    b = module(passes, "softmax_in_passes").softmax_in_passes(x, interpret=nan_interpret)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


@pytest.mark.parametrize("m, n", [(131, 3 * 256 + 5), (128, 256)])
def test_layernorm_too_long_for_vmem_takes_three_passes(nan_interpret, m, n):
    b = built("layernorm_in_passes")
    assert b.plan.ir.passes == 3, "a million-column max does not fit in VMEM: passes, with the rule on"
    rng = np.random.default_rng(n)
    x = rng.standard_normal((m, n)).astype(np.float32) * 2 + 1
    gamma, beta = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    out, var = module(b, "layernorm_in_passes").layernorm_in_passes(
        jnp.asarray(x), jnp.asarray(gamma), jnp.asarray(beta), interpret=nan_interpret
    )
    x64 = x.astype(np.float64)
    mean, variance = x64.mean(1, keepdims=True), x64.var(1, keepdims=True)
    np.testing.assert_allclose(np.asarray(var), variance[:, 0], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out), (x64 - mean) / np.sqrt(variance + 1e-5) * gamma + beta, atol=2e-5)


def test_each_pass_reads_the_one_before(tmp_path):
    """Pass p folds the reductions that need pass p-1's; the outputs along the axis are
    written in the last pass only, and their blocks stay put until then."""
    b = built("layernorm_in_passes")
    folds = {st.name: st.pass_index for st in b.plan.ir.statements if st.target == "accumulator"}
    assert folds == {"mean_acc": 0, "variance_acc": 1}
    writes = {st.name: (st.phase, st.pass_index) for st in b.plan.ir.statements if st.target == "tensor"}
    assert writes["out"] == ("step", 2) and writes["var"][0] == "final"
    src = b.source
    assert "grid=(pl.cdiv(m, block_m), 3 * pl.cdiv(n, block_n))" in src
    assert "return (m_index, jnp.maximum(n_step - 2 * pl.cdiv(n, block_n), 0))" in src  # out
    assert "return (m_index, lax.rem(n_step, pl.cdiv(n, block_n)))" in src  # x
    assert "# pass 2 of 3 over 'n': folds variance_acc" in src


def test_the_plan_says_which(tmp_path):
    text = format_plan(built("layernorm_in_passes").plan)
    rows, vector = 2**20 * 128 * 4, 2**20 * 4  # x and out: [128 rows, max n] f32; gamma, beta: [max n]
    mib = 2 * (2 * rows + 2 * vector) // 2**20  # double-buffered
    assert f"'n' held whole needs {mib} MiB of VMEM, over 16 MiB: 'n' is walked 3 times" in text
    text = format_plan(built("softmax_in_passes").plan)
    assert "rule off: 'n' is walked 3 times" in text
    whole = built("softmax_in_passes", lambda t: t.replace("rules: {keep_whole: off}\n", ""), tmp_path)
    assert "a reduction over 'n' is used elementwise against it: the whole axis sits in each block" in format_plan(whole.plan)


def per_segment_softmax(x, offsets):
    out = np.zeros(x.shape, np.float64)
    for b in range(len(offsets) - 1):
        rows = slice(offsets[b], offsets[b + 1])
        if offsets[b + 1] > offsets[b]:
            out[rows] = softmax(x[rows], 0)
    return out


@pytest.mark.parametrize("lowering", ["outer_pipeline", "grid"])
def test_jagged_softmax_over_segments_longer_than_a_tile(tmp_path, nan_interpret, lowering):
    """Segments of 3+ tiles (block 8), a tail, empty and length-1 segments, one short of the
    max: kept whole, a 25-row segment would be refused at call time."""
    b = built("jagged_softmax_in_passes", lambda t: t + f"lowering: {lowering}\n", tmp_path)
    assert b.plan.ir.passes == 3 and b.plan.lowering == lowering
    lengths = [25, 0, 1, 8, 24, 0, 17]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    x = np.random.default_rng(3).standard_normal((int(offsets[-1]), 128)).astype(np.float32) * 3
    got = module(b, "jagged_softmax_in_passes").jagged_softmax_in_passes(
        jnp.asarray(x), jnp.asarray(offsets), max_seq_len=26, interpret=nan_interpret
    )
    got = np.asarray(got)
    assert not np.isnan(got).any()
    np.testing.assert_allclose(got, per_segment_softmax(x, offsets), atol=2e-6)


def test_passes_lower_for_tpu():
    from codegen.verify import Case, lower_for_tpu

    for name, sizes in [("softmax_in_passes", {"m": 16, "n": 384}), ("layernorm_in_passes", {"m": 256, "n": 768})]:
        b = built(name)
        text = lower_for_tpu(module(b, name), b.plan, Case("three tiles", sizes))
        assert "tpu_custom_call" in text


def test_a_lowering_that_cannot_walk_passes_is_a_located_error(tmp_path):
    """The paged lowering walks its pages in its own loop: a softmax over pages written as
    a reduction against its own axis, with keep_whole off, is a spec error at the axis."""
    from codegen.errors import SpecError

    from conftest import SPECS

    text = (SPECS / "paged_attention.yaml").read_text()
    text = text[: text.index("accumulators:")] + (
        "rules: {keep_whole: off}\n"
        "compute:\n"
        "  s: dot(q, k_pages, over=d)\n"
        "  e: exp(s - max(s, over=t))\n"
        "  out: dot(e, v_pages, over=t) / sum(e, over=t)\n"
    )
    with pytest.raises(SpecError, match="the paged lowering cannot walk 't' in passes") as raised:
        build_text(tmp_path, text)
    assert raised.value.location.line == text.splitlines().index(next(line for line in text.splitlines() if line.startswith("  t: {paged"))) + 1
