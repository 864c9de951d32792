"""Every name the generated code introduces, in one table.

Spec names become Python identifiers in the generated module, next to names the
generator makes up. Validation derives from this table both the names a spec may
not use and the names that a spec's axes, tensors and values would generate, so
that no two things in a module can ever share a name.
"""

from __future__ import annotations

import re

# Module-level imports.
IMPORTS = ("jax", "jnp", "lax", "pl", "pltpu", "checkify", "functools", "math", "np", "contextlib", "dataclasses")

# Names local to the entry point or the kernel, whatever the spec.
FIXED = (
    "interpret", "debug", "grid", "kernel", "body", "compute", "step", "pipeline_step", "tile_valid", "tile_live",
    # the cost estimate
    "flops", "transcendentals", "bytes_accessed", "cost",
    # the paged lowering
    "slot", "carry", "has_next", "page", "page_id", "rows", "num_pages", "page_size",
    "pages_per_compute_block", "start_fetch", "wait_fetch", "next_block", "slot_ref", "prefetched_ref",
    "rows_sems",
)

# Names generated for each axis, each tensor or accumulator, and each computed value.
PER_AXIS = (
    "block_{}", "{}_start", "{}_index", "{}_size", "num_{}_tiles", "num_{}_blocks", "next_{}", "advance_{}", "{}_at",
    "{}_index_held", "{}_visit", "num_{}_visits", "{}_visit_segment", "{}_visit_tile",
    "{}_visit_segment_ref", "{}_visit_tile_ref",
    # an ordered axis's step counter and pass, a jagged axis's per-segment tile counts,
    # a paged axis's block of pages, and a jagged or paged axis's rows in a segment
    "{}_step", "{}_pass", "{}_tiles", "{}_visits", "{}_block", "{}_rows",
)
PER_TENSOR = (
    "{}_ref", "{}_out_ref", "{}_hbm_ref", "{}_out_hbm_ref", "{}_buffer", "{}_sems", "{}_index_map", "{}_rows", "{}_rows_copy",
)
# A value's transposes and masked copies are numbered when there are several
# (x_t, x_t1, x_masked, x_masked_2, x_t_masked); a statement reduced across steps of
# the ordered axis gets a scratch accumulator (out_acc, out_acc_ref).
PER_VALUE = ("{}_acc", "{}_acc_ref")
VALUE_VARIANT = r"{}(_t\d*)?(_masked(_\d+)?)?"

# Names generated whatever the spec names: the passes of a walk in passes (pass_1)
# and the index maps shared by several tensors (k_v_index_map).
ANY = ((re.compile(r"pass_\d+"), "a pass of the ordered axis"), (re.compile(r".+_index_map"), "an index map"))

RESERVED = frozenset(IMPORTS) | frozenset(FIXED)


def generated_names(axes, tensors, values) -> dict[str, str]:
    """generated name -> the spec name it is generated for (the names from patterns
    with numbers are found by `generated_owner`)."""
    derived: dict[str, str] = {}
    for patterns, names in ((PER_AXIS, axes), (PER_TENSOR, tensors), (PER_VALUE, values)):
        for name in names:
            for pattern in patterns:
                derived[pattern.format(name)] = name
    return derived


def generated_owner(name: str, derived: dict[str, str], values) -> str | None:
    """What `name` would be generated for in the module, or None if nothing."""
    if name in derived:
        return f"'{derived[name]}'"
    for pattern, what in ANY:
        if pattern.fullmatch(name):
            return what
    for value in values:
        if name != value and re.fullmatch(VALUE_VARIANT.format(re.escape(value)), name):
            return f"'{value}'"
    return None
