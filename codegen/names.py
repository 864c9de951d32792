"""Every name the generated code introduces, in one table.

Spec names become Python identifiers in the generated module, next to names the
generator makes up. Validation derives from this table both the names a spec may
not use and the names that a spec's axes, tensors and values would generate, so
that no two things in a module can ever share a name.
"""

from __future__ import annotations

# Module-level imports.
IMPORTS = ("jax", "jnp", "lax", "pl", "pltpu", "checkify", "functools", "math", "np", "contextlib")

# Names local to the entry point or the kernel, whatever the spec.
FIXED = (
    "interpret", "debug", "grid", "kernel", "body", "compute", "step", "pipeline_step", "tile_valid", "tile_live",
    # the cost estimate
    "flops", "transcendentals", "bytes_accessed", "cost",
    # the paged lowering
    "slot", "carry", "has_next", "page", "page_id", "rows", "num_pages", "page_size",
    "pages_per_compute_block", "start_fetch", "wait_fetch", "next_block", "slot_ref", "prefetched_ref",
)

# Names generated for each axis, each tensor or accumulator, and each computed value.
PER_AXIS = (
    "block_{}", "{}_start", "{}_index", "{}_size", "num_{}_tiles", "num_{}_blocks", "next_{}", "advance_{}", "{}_at",
    "{}_index_held", "{}_visit", "num_{}_visits", "{}_visit_segment", "{}_visit_tile",
    "{}_visit_segment_ref", "{}_visit_tile_ref",
)
PER_TENSOR = ("{}_ref", "{}_out_ref", "{}_hbm_ref", "{}_out_hbm_ref", "{}_buffer", "{}_sems", "{}_index_map")
PER_VALUE = ("{}_t", "{}_masked")

RESERVED = frozenset(IMPORTS) | frozenset(FIXED)


def generated_names(axes, tensors, values) -> dict[str, str]:
    """generated name -> the spec name it is generated for."""
    derived: dict[str, str] = {}
    for patterns, names in ((PER_AXIS, axes), (PER_TENSOR, tensors), (PER_VALUE, values)):
        for name in names:
            for pattern in patterns:
                derived[pattern.format(name)] = name
    return derived
