"""Tile screening: which tiles are worth the model's time, from the statistics preprocessing gathered.

Phi-sat-1 style: a tile that is almost all no-data (0 in every band: outside the swath) or almost all
cloud (bright in every band) is not sent to the detector. The decision uses only the per-tile statistics
the preprocessing kernel computes in the same pass (edge.kernels.preprocess.TileStats), so screening costs
nothing but a comparison per tile. No-data is checked first: a tile that is both counts as no-data.

    nodata:  nodata_fraction >= nodata_max
    cloud:   bright_fraction >= cloud_max        (bright: >= bright_threshold raw in every channel)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Screening decisions per tile.
KEEP, NODATA, CLOUD = 0, 1, 2


@dataclass(frozen=True)
class ScreenRule:
    enabled: bool = True
    nodata_max: float = 0.98
    cloud_max: float = 0.95


def screen_tiles(nodata_fraction: np.ndarray, bright_fraction: np.ndarray, rule: ScreenRule,
                 out: np.ndarray | None = None) -> np.ndarray:
    """Decision per tile (uint8: KEEP, NODATA or CLOUD) into `out` (allocated when None)."""
    n = len(nodata_fraction)
    if out is None:
        out = np.empty(n, np.uint8)
    out[:] = KEEP
    if rule.enabled:
        out[bright_fraction >= rule.cloud_max] = CLOUD
        out[nodata_fraction >= rule.nodata_max] = NODATA
    return out


__all__ = ["CLOUD", "KEEP", "NODATA", "ScreenRule", "screen_tiles"]
