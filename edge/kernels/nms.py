"""Non-maximum suppression and the cross-tile merge of detections.

Two public functions, validated here once for both implementations:

  nms(boxes, scores, class_ids=None, *, iou_threshold, score_threshold, max_detections, class_aware)
      -> int64 indices of the kept boxes
  merge_boxes(boxes, scores, class_ids=None, *, mode, metric, threshold, score_threshold,
              max_detections, class_aware) -> MergeResult

The compiled twin (ext/nms.cpp, ext/nms_core.hpp) finds the boxes a candidate can meet through a
hierarchical uniform grid, so dense tiled scenes (100,000 boxes) do not go quadratic; the numpy
reference below is the plain greedy loop and is the spec. Both give identical results.

Ranking. Candidates are the boxes with score >= score_threshold (compared in float64; None: all
boxes). They are ranked by score descending, then input index ascending (-0.0 ties with 0.0).

Overlap arithmetic (both implementations, bit for bit). Coordinates are float32, widened exactly to
float64; everything below is float64 in this order:
    iw = max(0, min(x2a, x2b) - max(x1a, x1b)),  ih likewise,  inter = iw * ih
    area = (x2 - x1) * (y2 - y1)
    "iou":  denom = (area_a + area_b) - inter        "ios":  denom = min(area_a, area_b)
    strict match:     inter > t * denom
    inclusive match:  t == 0, or (inter > 0 and inter >= t * denom)
Both are symmetric in a and b. A strict match needs a positive intersection, so boxes of zero area
never suppress and are never suppressed; with t = 0 any positive overlap matches.

nms: greedy NMS with the strict "iou" match. Walk the ranked candidates; a candidate is kept iff no
already-kept box (of the same class when class_aware and class ids are given) matches it; stop after
max_detections kept. Returns the kept indices in rank order.

merge_boxes, phase 1 (grouping, both modes): the same greedy walk; a candidate that matches kept
boxes joins the group of the best-ranked of them; otherwise it starts a group. This is exactly the
"suppressed by the first keeper that matches it" of greedy NMS and of SAHI's greedy_nmm.
  mode "nms": strict match of `metric`. Output per group: the keeper's box, score and class.
  mode "nmm": greedy non-maximum merging with SAHI's GREEDYNMM semantics
      (sahi/postprocess/combine.py: greedy_nmm + GreedyNMMPostprocess / _apply_merge;
      sahi/postprocess/utils.py: has_match, merge_object_prediction_pair):
    - phase 1 uses SAHI's `metric >= threshold` (inclusive match above; SAHI's safe ratio is 0 for
      a zero denominator, so threshold 0 matches every pair of the class, even disjoint ones);
    - phase 2, per group: start from the keeper's box; for each member in rank order, if it
      strictly matches (SAHI's has_match: `metric > threshold`) the box merged so far, grow the box
      to the union (min x1, min y1, max x2, max y2); a member that fails this check is dropped
      (absorbed, not merged), as in SAHI;
    - the group's score is the keeper's (SAHI: max of the merged scores, the same value) and its
      class the keeper's.
  Output per group, in rank order of the keepers: boxes float32, scores float32, class_ids int64,
  keep = input index of the keeper, members = number of input boxes the group absorbed, keeper
  included (in "nmm" also the members dropped in phase 2). max_detections keeps the first
  max_detections groups of the full run, so `members` and merged boxes do not depend on it.

Differences from SAHI, on purpose:
  - ties in score are ranked by input index (SAHI: by x1, y1, x2, y2 through np.lexsort);
  - on an exact score tie in a class-agnostic merge SAHI takes the class of the last merged member
    (get_merged_category keeps pred1's only when its score is strictly higher); we keep the
    keeper's class, so class_ids[i] is always the class of input keep[i];
  - the class-aware output is in global rank order (SAHI: grouped by category);
  - overlap arithmetic is the float64 multiply form above (SAHI: a float32 ratio in phase 1 and
    a float64 ratio in phase 2), so results can differ when a metric is within rounding of t;
  - SAHI clips boxes to the image and requires non-negative coordinates; we take them as given.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from edge.kernels import _backend

_fast = _backend.compiled("nms")

#: Default IoU threshold of the suppression (the usual value for detectors).
DEFAULT_IOU_THRESHOLD = 0.5
MODES = ("nms", "nmm")
METRICS = ("iou", "ios")


@dataclass(frozen=True, eq=False)
class MergeResult:
    """Detections after the cross-tile merge, one row per group, in rank order of the keepers."""

    boxes: np.ndarray      # (M, 4) float32 x1 y1 x2 y2, frame pixels
    scores: np.ndarray     # (M,) float32, the keeper's score
    class_ids: np.ndarray  # (M,) int64, the keeper's class (0 when no class ids were given)
    keep: np.ndarray       # (M,) int64, input index of each group's keeper (highest-ranked box)
    members: np.ndarray    # (M,) int64, input boxes the group absorbed, keeper included

    def __len__(self) -> int:
        return len(self.keep)


# ---------------------------------------------------------------------------------------------
# Validation (shared by both implementations)
# ---------------------------------------------------------------------------------------------

def _real_array(value, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers (integer or float dtype), got dtype {arr.dtype}")
    return arr


def _check_boxes(boxes) -> np.ndarray:
    arr = _real_array(boxes, "boxes")
    if arr.size == 0 and arr.ndim == 1:  # [] means no boxes
        arr = arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) as x1 y1 x2 y2, got {arr.shape}")
    with np.errstate(over="ignore"):  # a float64 beyond float32 range becomes inf: reported below
        out = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        raise ValueError(f"boxes must be finite (as float32): row {row} is {arr[row].tolist()}")
    bad = (out[:, 2] < out[:, 0]) | (out[:, 3] < out[:, 1])
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"boxes need x2 >= x1 and y2 >= y1: row {row} is {out[row].tolist()}")
    return out


def _check_scores(scores, n: int) -> np.ndarray:
    arr = _real_array(scores, "scores")
    if arr.shape != (n,):
        raise ValueError(f"scores must have shape ({n},) to match boxes, got {arr.shape}")
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"scores must be finite (as float32): scores[{i}] is {arr[i]!r}")
    return out


def _check_class_ids(class_ids, n: int) -> np.ndarray | None:
    if class_ids is None:
        return None
    arr = np.asarray(class_ids)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"class_ids must hold integers, got dtype {arr.dtype}")
    if arr.shape != (n,):
        raise ValueError(f"class_ids must have shape ({n},) to match boxes, got {arr.shape}")
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise ValueError("class_ids must fit in int64")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _check_threshold(value, name: str) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    t = float(value)
    if not 0.0 <= t <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return t


def _check_score_threshold(value) -> float:
    """None -> -inf (every box is a candidate)."""
    if value is None:
        return -np.inf
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"score_threshold must be a real number or None, got {value!r}")
    t = float(value)
    if np.isnan(t):
        raise ValueError("score_threshold must not be NaN")
    return t


def _check_max_detections(value) -> int:
    """None -> -1 (no limit)."""
    if value is None:
        return -1
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"max_detections must be an int or None, got {value!r}")
    if value < 0:
        raise ValueError(f"max_detections must be >= 0, got {value}")
    return int(value)


def _check_common(boxes, scores, class_ids, class_aware, score_threshold, max_detections):
    b = _check_boxes(boxes)
    s = _check_scores(scores, len(b))
    c = _check_class_ids(class_ids, len(b))
    if not isinstance(class_aware, (bool, np.bool_)):
        raise TypeError(f"class_aware must be a bool, got {class_aware!r}")
    return (b, s, c, bool(class_aware), _check_score_threshold(score_threshold),
            _check_max_detections(max_detections))


# ---------------------------------------------------------------------------------------------
# Reference implementation (the spec)
# ---------------------------------------------------------------------------------------------

def _ranked_candidates(scores: np.ndarray, score_threshold: float) -> np.ndarray:
    """Input indices of the candidates, by score descending then index ascending."""
    idx = np.flatnonzero(scores.astype(np.float64) >= score_threshold)
    # a stable sort of the negated scores keeps equal scores (and -0.0 == 0.0) in index order
    return idx[np.argsort(-scores[idx], kind="stable")]


def _matches(b: np.ndarray, area: np.ndarray, k: int, rest: np.ndarray, t: float,
             ios: bool, inclusive: bool) -> np.ndarray:
    """Match of ranked box k against each ranked box in `rest` (the arithmetic of the docstring)."""
    iw = np.maximum(0.0, np.minimum(b[k, 2], b[rest, 2]) - np.maximum(b[k, 0], b[rest, 0]))
    ih = np.maximum(0.0, np.minimum(b[k, 3], b[rest, 3]) - np.maximum(b[k, 1], b[rest, 1]))
    inter = iw * ih
    denom = np.minimum(area[k], area[rest]) if ios else (area[k] + area[rest]) - inter
    if inclusive:
        if t == 0.0:
            return np.ones(len(rest), dtype=bool)
        return (inter > 0.0) & (inter >= t * denom)
    return inter > t * denom


def _greedy_groups(b: np.ndarray, cls: np.ndarray | None, t: float, ios: bool, inclusive: bool,
                   max_groups: int) -> tuple[list[int], np.ndarray]:
    """Greedy walk over ranked boxes b (float64). Returns (keeper positions in rank order,
    group number of every ranked box; -1 for boxes left when max_groups stopped the walk)."""
    n = len(b)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    group = np.full(n, -1, dtype=np.int64)
    keepers: list[int] = []
    rest = np.arange(n)
    while rest.size and len(keepers) != max_groups:
        k, rest = int(rest[0]), rest[1:]
        group[k] = len(keepers)
        keepers.append(k)
        hit = _matches(b, area, k, rest, t, ios, inclusive)
        if cls is not None:
            hit &= cls[rest] == cls[k]
        group[rest[hit]] = group[k]
        rest = rest[~hit]
    return keepers, group


def nms_reference(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray | None,
                  iou_threshold: float, score_threshold: float, max_detections: int,
                  out: np.ndarray) -> int:
    """Greedy NMS into out (N,) int64; returns the number kept. Arguments are already validated:
    float32 C-contiguous boxes (N, 4) and scores (N,), int64 class_ids (N,) or None (agnostic),
    score_threshold -inf for none, max_detections -1 for no limit."""
    order = _ranked_candidates(scores, score_threshold)
    cls = None if class_ids is None else class_ids[order]
    keepers, _ = _greedy_groups(boxes[order].astype(np.float64), cls, iou_threshold,
                                ios=False, inclusive=False, max_groups=max_detections)
    out[:len(keepers)] = order[keepers]
    return len(keepers)


def merge_reference(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray | None,
                    class_aware: bool, merge: bool, ios: bool, threshold: float,
                    score_threshold: float, out_boxes: np.ndarray, out_scores: np.ndarray,
                    out_class_ids: np.ndarray, out_keep: np.ndarray, out_members: np.ndarray) -> int:
    """Group (and in "nmm" merge) the candidates; fill the first M rows of the (N, ...) outputs with
    the groups in rank order; return M. class_ids None means all class 0; class_aware False groups
    across classes (the outputs still carry the keeper's class)."""
    order = _ranked_candidates(scores, score_threshold)
    b = boxes[order].astype(np.float64)
    cls = None if class_ids is None else class_ids[order]
    keepers, group = _greedy_groups(b, cls if class_aware else None, threshold,
                                    ios=ios, inclusive=merge, max_groups=-1)
    m = len(keepers)
    kept = np.asarray(keepers, dtype=np.int64)
    out_members[:m] = np.bincount(group, minlength=m)[:m]
    out_keep[:m] = order[kept]
    out_scores[:m] = scores[order[kept]]
    out_class_ids[:m] = 0 if cls is None else cls[kept]
    merged = boxes[order[kept]].copy()
    if merge:
        # phase 2, SAHI's _apply_merge: fold each member (rank order) into the box merged so far
        # when it strictly matches it; Python floats are IEEE float64, as in the compiled twin
        members_of = np.argsort(group, kind="stable")  # ranked positions grouped, rank order kept
        starts = np.searchsorted(group[members_of], np.arange(m))
        ends = np.append(starts[1:], len(group))
        bl = b.tolist()
        for g in range(m):
            x1, y1, x2, y2 = bl[keepers[g]]
            for p in members_of[starts[g]:ends[g]].tolist():
                if p == keepers[g]:
                    continue
                u1, v1, u2, v2 = bl[p]
                iw = max(0.0, min(x2, u2) - max(x1, u1))
                ih = max(0.0, min(y2, v2) - max(y1, v1))
                inter = iw * ih
                area_m = (x2 - x1) * (y2 - y1)
                area_p = (u2 - u1) * (v2 - v1)
                denom = min(area_m, area_p) if ios else (area_m + area_p) - inter
                if inter > threshold * denom:
                    x1, y1 = (u1 if u1 < x1 else x1), (v1 if v1 < y1 else y1)
                    x2, y2 = (u2 if u2 > x2 else x2), (v2 if v2 > y2 else y2)
            merged[g] = (x1, y1, x2, y2)
    out_boxes[:m] = merged
    return m


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------

def nms(boxes, scores, class_ids=None, *, iou_threshold: float = DEFAULT_IOU_THRESHOLD,
        score_threshold: float | None = None, max_detections: int | None = None,
        class_aware: bool = True) -> np.ndarray:
    """Greedy non-maximum suppression (see the module docstring for the exact rule).

    boxes (N, 4) x1 y1 x2 y2 (any real dtype, used as float32), scores (N,), class_ids (N,) ints or
    None. Returns int64 indices of the kept boxes, score descending then index ascending.
    Raises ValueError/TypeError naming the bad argument.
    """
    b, s, c, class_aware, st, md = _check_common(boxes, scores, class_ids, class_aware,
                                                 score_threshold, max_detections)
    t = _check_threshold(iou_threshold, "iou_threshold")
    out = np.empty(len(b), dtype=np.int64)
    impl = _fast.nms if _fast is not None else nms_reference
    k = impl(b, s, c if class_aware else None, t, st, md, out)
    return out[:k].copy()


def merge_boxes(boxes, scores, class_ids=None, *, mode: str = "nms", metric: str = "iou",
                threshold: float = 0.5, score_threshold: float | None = None,
                max_detections: int | None = None, class_aware: bool = True) -> MergeResult:
    """Merge detections in frame coordinates after tiling (see the module docstring).

    mode "nms" (suppress) or "nmm" (SAHI's greedy non-maximum merging); metric "iou" or "ios"
    (intersection over the smaller box). Returns a MergeResult, groups in rank order.
    """
    b, s, c, class_aware, st, md = _check_common(boxes, scores, class_ids, class_aware,
                                                 score_threshold, max_detections)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    t = _check_threshold(threshold, "threshold")
    n = len(b)
    out_boxes = np.empty((n, 4), dtype=np.float32)
    out_scores = np.empty(n, dtype=np.float32)
    out_class_ids = np.empty(n, dtype=np.int64)
    out_keep = np.empty(n, dtype=np.int64)
    out_members = np.empty(n, dtype=np.int64)
    impl = _fast.merge if _fast is not None else merge_reference
    m = impl(b, s, c, class_aware, mode == "nmm", metric == "ios", t, st,
             out_boxes, out_scores, out_class_ids, out_keep, out_members)
    if md >= 0:
        m = min(m, md)
    return MergeResult(out_boxes[:m].copy(), out_scores[:m].copy(), out_class_ids[:m].copy(),
                       out_keep[:m].copy(), out_members[:m].copy())
