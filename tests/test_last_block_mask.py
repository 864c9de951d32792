"""The last_block_mask rule: the tail mask of the ordered axis, computed on its last block alone.

Off by default (the compiler's estimate charges the branch more than the masks it saves);
on, it must leave every kernel's results as they were, which the verify cases check with
tails, empty and length-1 segments and three or more tiles, in interpret mode with
uninitialised memory read as NaN, so a block the rule wrongly left unmasked shows.
"""

import pytest

from codegen.verify import verify_built

from conftest import SPECS, build_text, with_rule

# One kernel per kind of ordered axis and lowering: tiled on the pallas_call grid (with
# snake_order), tiled with mask_skip's clamped walk, jagged (per-segment pipeline), paged.
KINDS = ("bmm", "causal_attention", "segment_sum", "gdpa_jagged", "paged_attention")


# segment_sum's rows are walked in blocks aligned to the array by default (aligned_tiles),
# where a segment's first block overhangs it too: its segment-aligned blocks are the kind here.
SWITCHED = {"segment_sum": ("aligned_tiles", "off")}


@pytest.mark.parametrize("name", KINDS)
def test_masks_on_the_last_block_alone_give_the_same_results(tmp_path, name):
    text = (SPECS / f"{name}.yaml").read_text()
    if name in SWITCHED:
        text = with_rule(text, *SWITCHED[name])
    built = build_text(tmp_path, with_rule(text, "last_block_mask", "on"))
    ordered = built.plan.ir.ordered_axis
    assert built.plan.last_block_masks == {ordered}
    assert "_mask_last_block(" in built.source and "_mask_tail(" in built.source
    assert f"# last_block_mask: only the last '{ordered}' block can overhang its extent" in built.source
    log = []
    assert verify_built(built, log=log.append), "\n".join(log)


def test_blocks_aligned_to_the_array_keep_their_masks_on_every_block(tmp_path):
    built = build_text(tmp_path, with_rule((SPECS / "segment_sum.yaml").read_text(), "last_block_mask", "on"))
    assert built.plan.aligned_tiles == {"t"} and built.plan.last_block_masks == set()
    assert "_mask_last_block(" not in built.source and "_mask_outside(" in built.source
    reason = next(d.reason for d in built.plan.decisions if d.rule == "last_block_mask")
    assert "a segment's first block can overhang it too" in reason
