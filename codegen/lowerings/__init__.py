"""The lowerings: one unit per way of turning a plan into a Pallas kernel.

Each unit owns everything that differs between lowerings: whether it applies
to a kernel, how it splits the grid between the pallas_call and an inner
pipeline, its kernel body, its pallas_call, its scratch, its entry-point
keywords and its lines of the plan report. The planner picks one from
`LOWERINGS`, in table order, the way JAX's Mosaic lowering registers one rule
per primitive; nothing outside this package asks which one was picked.
"""

from __future__ import annotations

from codegen.lowerings.base import Lowering
from codegen.lowerings.paged import PagedWalk
from codegen.lowerings.pallas_grid import PallasGrid
from codegen.lowerings.pipeline import OuterPipeline, SegmentGrid

# Table order is preference order: the first unit that applies is the default.
LOWERINGS: dict[str, Lowering] = {
    unit.name: unit for unit in (PagedWalk(), OuterPipeline(), SegmentGrid(), PallasGrid())
}
# The names a spec's `lowering:` may choose; the schema enumerates them.
CHOOSABLE = tuple(name for name, unit in LOWERINGS.items() if unit.choosable)

__all__ = ["CHOOSABLE", "LOWERINGS", "Lowering"]
