"""Synthetic detector output of a tiled scene, before the cross-tile merge.

`clustered_boxes` imitates what the head decoder hands the merge stage for one large frame:
objects (mostly small, some elongated like ships) scattered over the frame with a few dense
clusters (harbours); every tile that sees an object reports a few jittered boxes of it with
decaying scores (raw, pre-NMS detector output), so objects in the overlap strips between tiles
are reported by two or four tiles, cut at the tile borders; plus low-score noise boxes.
Boxes come grouped by tile, in tile order, as the decoder emits them. Deterministic per seed.

Only numpy and the project's tile plan are used, so tests can import it anywhere.
"""
from __future__ import annotations

import numpy as np

from edge.kernels.tiling import plan_tiles

#: Share of the output that is low-score noise (false positives of a weak detector).
NOISE_FRACTION = 0.05
#: Share of objects placed in clusters (harbours, car parks); the rest are scattered uniformly.
CLUSTERED_FRACTION = 0.6
#: Objects per cluster, on average.
OBJECTS_PER_CLUSTER = 40
#: Object size range in pixels (long side), drawn log-uniformly.
MIN_SIZE, MAX_SIZE = 8.0, 80.0
#: Share of elongated objects (ships), their aspect ratio range.
ELONGATED_FRACTION = 0.3
MIN_ASPECT, MAX_ASPECT = 2.5, 5.0
#: A tile reports an object only when it sees at least this share of its area.
MIN_VISIBLE = 0.3
#: Mean number of extra (jittered, lower-score) boxes per reported object, and the cap.
MEAN_EXTRA_BOXES = 1.5
MAX_BOXES_PER_SIGHTING = 7
#: Jitter of each box edge, as a share of the object size; score decay per extra box.
EDGE_JITTER = 0.08
SCORE_DECAY = 0.8


def _objects(rng: np.random.Generator, m: int, frame: int):
    """m objects: (x1, y1, x2, y2) float64 and their class (-1 = elongated, assigned later)."""
    n_clusters = max(1, int(m * CLUSTERED_FRACTION) // OBJECTS_PER_CLUSTER)
    centres = rng.uniform(0.05 * frame, 0.95 * frame, size=(n_clusters, 2))
    spread = rng.uniform(0.01 * frame, 0.05 * frame, size=n_clusters)
    in_cluster = rng.random(m) < CLUSTERED_FRACTION
    which = rng.integers(0, n_clusters, size=m)
    centre = np.where(in_cluster[:, None],
                      centres[which] + rng.normal(size=(m, 2)) * spread[which, None],
                      rng.uniform(0, frame, size=(m, 2)))
    long_side = np.exp(rng.uniform(np.log(MIN_SIZE), np.log(MAX_SIZE), size=m))
    elongated = rng.random(m) < ELONGATED_FRACTION
    aspect = np.where(elongated, rng.uniform(MIN_ASPECT, MAX_ASPECT, size=m), rng.uniform(1.0, 1.5, size=m))
    short_side = np.maximum(long_side / aspect, 3.0)
    horizontal = rng.random(m) < 0.5
    w = np.where(horizontal, long_side, short_side)
    h = np.where(horizontal, short_side, long_side)
    cx = np.clip(centre[:, 0], w / 2, frame - w / 2)
    cy = np.clip(centre[:, 1], h / 2, frame - h / 2)
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1), elongated


def _sightings(objs: np.ndarray, origins: np.ndarray, tile: int):
    """(object index, tile index, clipped box, visible share) for every tile that sees an object."""
    xs = np.unique(origins[:, 1])
    ys = np.unique(origins[:, 0])
    n_cols = len(xs)
    obj_idx, tile_idx = [], []
    # an object of <= MAX_SIZE px meets at most 2 tiles per axis unless tiles are tiny: try 3
    first_col = np.searchsorted(xs + tile, objs[:, 0], side="right")
    first_row = np.searchsorted(ys + tile, objs[:, 1], side="right")
    for dr in range(3):
        for dc in range(3):
            r = first_row + dr
            c = first_col + dc
            ok = (r < len(ys)) & (c < n_cols)
            r_ok, c_ok = np.minimum(r, len(ys) - 1), np.minimum(c, n_cols - 1)
            ok &= (ys[r_ok] < objs[:, 3]) & (xs[c_ok] < objs[:, 2])
            sel = np.flatnonzero(ok)
            obj_idx.append(sel)
            tile_idx.append(r_ok[sel] * n_cols + c_ok[sel])
    obj_idx = np.concatenate(obj_idx)
    tile_idx = np.concatenate(tile_idx)
    ty, tx = origins[tile_idx, 0], origins[tile_idx, 1]
    o = objs[obj_idx]
    clipped = np.stack([np.maximum(o[:, 0], tx), np.maximum(o[:, 1], ty),
                        np.minimum(o[:, 2], tx + tile), np.minimum(o[:, 3], ty + tile)], axis=1)
    area = (o[:, 2] - o[:, 0]) * (o[:, 3] - o[:, 1])
    visible = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1]) / area
    keep = visible >= MIN_VISIBLE
    # object order first, so that truncating to n boxes drops whole objects from the end
    order = np.lexsort((tile_idx[keep], obj_idx[keep]))
    return obj_idx[keep][order], tile_idx[keep][order], clipped[keep][order], visible[keep][order]


def clustered_boxes(n: int, *, seed: int = 0, frame: int = 4096, tile: int = 256, overlap: int = 32,
                    n_classes: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exactly n raw detections of a tiled frame_x_frame scene, in frame pixels.

    Returns (boxes float32 (n, 4) x1 y1 x2 y2, scores float32 (n,) in (0, 1], class_ids int64 (n,)).
    Elongated objects (ships) are class 0; the others are spread over all n_classes.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    rng = np.random.default_rng(seed)
    plan = plan_tiles(frame, frame, tile, overlap)
    n_noise = int(round(n * NOISE_FRACTION))
    n_obj_boxes = n - n_noise

    parts = [(np.empty((0, 4)), np.empty(0), np.empty(0, np.int64), np.empty(0, np.int64))]
    have = 0
    while have < n_obj_boxes:
        # ~2.5 boxes per sighting, ~1.3 sightings per object: over-draw a little, loop if short
        m = max(16, int((n_obj_boxes - have) / 3.0 * 1.2))
        objs, elongated = _objects(rng, m, frame)
        cls = np.where(elongated, 0, rng.integers(0, n_classes, size=m))
        base_score = rng.beta(6.0, 2.0, size=m)
        obj_idx, tile_idx, clipped, visible = _sightings(objs, plan.origins, tile)
        per = np.minimum(1 + rng.poisson(MEAN_EXTRA_BOXES, size=len(obj_idx)), MAX_BOXES_PER_SIGHTING)
        rank = np.arange(per.sum()) - np.repeat(np.cumsum(per) - per, per)  # 0 = best box of a sighting
        s_idx = np.repeat(np.arange(len(obj_idx)), per)
        size = np.repeat(np.maximum(clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]), per)
        jitter = rng.normal(size=(len(s_idx), 4)) * (EDGE_JITTER * size)[:, None]
        jitter[rank == 0] *= 0.3  # the top box of a sighting sits closest to the object
        b = clipped[s_idx] + jitter
        ty = plan.origins[tile_idx[s_idx], 0]
        tx = plan.origins[tile_idx[s_idx], 1]
        b[:, [0, 2]] = np.clip(b[:, [0, 2]], tx[:, None], (tx + tile)[:, None])
        b[:, [1, 3]] = np.clip(b[:, [1, 3]], ty[:, None], (ty + tile)[:, None])
        b[:, 2] = np.maximum(b[:, 2], b[:, 0] + 1.0)
        b[:, 3] = np.maximum(b[:, 3], b[:, 1] + 1.0)
        o = obj_idx[s_idx]
        score = (base_score[o] * np.sqrt(visible[s_idx]) * SCORE_DECAY ** rank
                 * rng.uniform(0.9, 1.0, size=len(s_idx)))
        parts.append((b, score, cls[o], tile_idx[s_idx]))
        have += len(b)

    boxes = np.concatenate([p[0] for p in parts])[:n_obj_boxes]
    scores = np.concatenate([p[1] for p in parts])[:n_obj_boxes]
    classes = np.concatenate([p[2] for p in parts])[:n_obj_boxes]
    tiles = np.concatenate([p[3] for p in parts])[:n_obj_boxes]

    # noise: small boxes anywhere, low scores, any class, each inside the tile that reports it
    noise_tile = rng.integers(0, plan.n_tiles, size=n_noise)
    nw = rng.uniform(4.0, 30.0, size=n_noise)
    nh = rng.uniform(4.0, 30.0, size=n_noise)
    ny = plan.origins[noise_tile, 0] + rng.uniform(0, 1, size=n_noise) * (tile - nh)
    nx = plan.origins[noise_tile, 1] + rng.uniform(0, 1, size=n_noise) * (tile - nw)
    noise = np.stack([nx, ny, nx + nw, ny + nh], axis=1)
    noise_score = rng.uniform(0.01, 0.3, size=n_noise)
    noise_cls = rng.integers(0, n_classes, size=n_noise)

    boxes = np.concatenate([boxes, noise])
    scores = np.concatenate([scores, noise_score])
    classes = np.concatenate([classes, noise_cls])
    tiles = np.concatenate([tiles, noise_tile])
    order = np.argsort(tiles, kind="stable")  # decoder order: tile by tile
    boxes = np.clip(boxes[order], 0, frame).astype(np.float32)
    scores = np.clip(scores[order], 1e-3, 1.0).astype(np.float32)
    return np.ascontiguousarray(boxes), scores, classes[order].astype(np.int64)
