"""What a generated kernel does with inputs it cannot handle: differentiation raises a
clear forward-only error, and debug=True catches values that would give silent NaNs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from conftest import checked_in_module

H, D, KV, BLOCK = 1, 128, 16, 16


def gdpa_inputs(lengths, rows=None, seed=0):
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    rows = int(offsets[-1]) if rows is None else rows
    q = jnp.asarray(rng.standard_normal((rows, H, D)), jnp.bfloat16)
    k = jnp.asarray(rng.standard_normal((len(lengths), KV, H, D)), jnp.bfloat16)
    v = jnp.asarray(rng.standard_normal((len(lengths), KV, H, D)), jnp.bfloat16)
    return q, k, v, jnp.asarray(offsets)


def test_grad_through_a_kernel_says_it_is_forward_only():
    exp = checked_in_module("exp").exp
    x = jnp.ones((8, 128), jnp.float32)
    assert np.allclose(exp(x, interpret=True), np.e)
    with pytest.raises(NotImplementedError, match="exp is forward-only: it has no backward kernel"):
        jax.grad(lambda x: exp(x, interpret=True).sum())(x)
    with pytest.raises(NotImplementedError, match="forward-only"):
        jax.jvp(lambda x: exp(x, interpret=True), (x,), (x,))
    assert "Forward only" in exp.__doc__


def test_debug_accepts_good_inputs_and_changes_nothing():
    gdpa = checked_in_module("gdpa").gdpa
    inputs = gdpa_inputs([3, 0, BLOCK + 1])
    run = functools.partial(gdpa, max_seq_len=2 * BLOCK, block_sq=BLOCK, interpret=True)
    np.testing.assert_array_equal(np.asarray(run(*inputs, debug=True)), np.asarray(run(*inputs)))


@pytest.mark.parametrize(
    "lengths, rows, max_seq_len, message",
    [
        ([3, 5], 12, 16, r"q_offsets\[-1\] must be the row count 12, got 8"),
        ([3, 20], None, 16, r"max_seq_len=16 is less than the longest segment, 20 rows"),
    ],
    ids=["offsets end short of the rows", "a segment longer than max_seq_len"],
)
def test_debug_catches_inputs_that_would_give_nans(lengths, rows, max_seq_len, message):
    gdpa = checked_in_module("gdpa").gdpa
    inputs = gdpa_inputs(lengths, rows)
    run = functools.partial(gdpa, max_seq_len=max_seq_len, block_sq=BLOCK, interpret=True)
    with pytest.raises(Exception, match=message):  # eager: checkify raises at once
        run(*inputs, debug=True)
    # under jit, through checkify
    checked = checkify.checkify(jax.jit(functools.partial(run, debug=True)))
    error, _ = checked(*inputs)
    assert error.get() is not None and message.split(" ")[0].replace("\\", "") in error.get()


def test_debug_catches_paged_lengths_past_the_table():
    paged = checked_in_module("paged_attention").paged_attention
    rng = np.random.default_rng(0)
    page, total = 16, 6
    q = jnp.asarray(rng.standard_normal((2, 8, D)), jnp.bfloat16)
    k = jnp.asarray(rng.standard_normal((1, total, page, D)), jnp.bfloat16)
    table = jnp.asarray([[0, 1], [2, 3]], jnp.int32)
    with pytest.raises(Exception, match=r"every lengths must be in \[0, 32\]"):
        paged(q, k, k, jnp.asarray([5, 40], jnp.int32), table, pages_per_compute_block=1, debug=True, interpret=True)
    with pytest.raises(Exception, match=r"page_indices names a page outside \[0, 6\)"):
        paged(q, k, k, jnp.asarray([5, 20], jnp.int32), jnp.asarray([[0, 9], [2, 7]], jnp.int32),
              pages_per_compute_block=1, debug=True, interpret=True)
    # a page id past a sequence's length is never read, so it may be anything
    out = paged(q, k, k, jnp.asarray([5, 20], jnp.int32), jnp.asarray([[0, 9], [2, 3]], jnp.int32),
                pages_per_compute_block=1, debug=True, interpret=True)
    assert not np.isnan(np.asarray(out, np.float32)).any()
