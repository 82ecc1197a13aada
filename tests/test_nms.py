"""NMS and cross-tile merge: both implementations, the greedy definition, SAHI's greedy NMM, errors."""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.boxgen import clustered_boxes
from edge.kernels import nms as nms_mod
from edge.kernels.nms import MergeResult, merge_boxes, nms
from tests.conftest import compiled_of, examples, run_both, use_impl

MERGE_FIELDS = ("boxes", "scores", "class_ids", "keep", "members")
# the `impl` fixture only names an implementation: safe to share across hypothesis examples
WITH_IMPL = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def assert_same_merge(a: MergeResult, b: MergeResult):
    for f in MERGE_FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and x.shape == y.shape, f
        # bit-for-bit, including the sign of zeros
        assert x.tobytes() == y.tobytes(), f


# ---------------------------------------------------------------------------------------------
# Random detections: identical, touching, nested, zero-area boxes, ties, many sizes and extents
# ---------------------------------------------------------------------------------------------

@st.composite
def detections(draw, max_n=300):
    n = draw(st.integers(0, max_n))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    style = draw(st.sampled_from(["grid", "sizes", "cluster", "far"]))
    if style == "grid":  # small integers: identical, touching, nested and zero-area boxes abound
        xy = rng.integers(0, 12, (n, 2))
        wh = rng.integers(0, 7, (n, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1)
    elif style == "sizes":  # sizes over three decades: several grid levels, large over small
        xy = rng.uniform(-50, 400, (n, 2))
        wh = np.exp(rng.uniform(np.log(0.5), np.log(500), (n, 2)))
        boxes = np.concatenate([xy, xy + wh], axis=1)
    elif style == "cluster":  # jittered duplicates of a few objects, like tiled detector output
        k = max(1, n // 6)
        obj_xy = rng.uniform(0, 200, (k, 2))
        obj_wh = rng.uniform(4, 40, (k, 2))
        pick = rng.integers(0, k, n)
        jitter = rng.normal(0, 2, (n, 4))
        boxes = np.concatenate([obj_xy[pick], obj_xy[pick] + obj_wh[pick]], axis=1) + jitter
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
    else:  # a huge extent with small boxes, negative coordinates
        xy = rng.uniform(-1e6, 1e6, (n, 2))
        wh = rng.uniform(0, 20, (n, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1)
    if n and draw(st.booleans()):  # exact duplicates and zero-area boxes
        dup = rng.integers(0, n, n // 3)
        boxes[rng.integers(0, n, n // 3)] = boxes[dup]
        flat = rng.integers(0, n, n // 8)
        boxes[flat, 2] = boxes[flat, 0]
    score_style = draw(st.sampled_from(["ties", "distinct", "zeros"]))
    if score_style == "ties":
        scores = rng.choice(np.array([0.25, 0.5, 0.5, 0.75, 1.0]), n)
    elif score_style == "zeros":
        scores = rng.choice(np.array([0.0, -0.0, 0.3, -0.5]), n)
    else:
        scores = rng.uniform(0, 1, n)
    class_style = draw(st.sampled_from(["none", "few", "wide"]))
    classes = None
    if class_style == "few":
        classes = rng.integers(0, 3, n)
    elif class_style == "wide":  # ids that do not fit int32: the hash-map labels
        classes = rng.choice(np.array([-(2**62), 7, 2**40, 2**63 - 1]), n)
    dtype = draw(st.sampled_from(["float32", "float64", "int32", "fortran"]))
    if style == "grid" and dtype == "int32":
        boxes = boxes.astype(np.int32)
    elif dtype == "fortran":  # non-contiguous input, converted once by the validation layer
        boxes = np.asfortranarray(boxes)
    else:
        boxes = boxes.astype(np.float64 if dtype == "float64" else np.float32)
    return boxes, scores.astype(np.float32), classes


thresholds = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 0.7, 1.0]), st.floats(0, 1))
score_thresholds = st.one_of(st.none(), st.sampled_from([0.0, 0.5, -1.0]), st.floats(-1, 1.5))


@settings(max_examples=examples(500), deadline=None)
@given(detections(), thresholds, score_thresholds, st.one_of(st.none(), st.integers(0, 50)), st.booleans())
def test_nms_compiled_equals_reference(det, t, st_, max_det, class_aware):
    boxes, scores, classes = det
    ref, fast = run_both(nms_mod, nms, boxes, scores, classes, iou_threshold=t, score_threshold=st_,
                         max_detections=max_det, class_aware=class_aware)
    assert ref.dtype == fast.dtype == np.int64
    np.testing.assert_array_equal(ref, fast)


@settings(max_examples=examples(500), deadline=None)
@given(detections(), st.sampled_from(["nms", "nmm"]), st.sampled_from(["iou", "ios"]), thresholds,
       score_thresholds, st.one_of(st.none(), st.integers(0, 50)), st.booleans())
def test_merge_compiled_equals_reference(det, mode, metric, t, st_, max_det, class_aware):
    boxes, scores, classes = det
    ref, fast = run_both(nms_mod, merge_boxes, boxes, scores, classes, mode=mode, metric=metric,
                         threshold=t, score_threshold=st_, max_detections=max_det,
                         class_aware=class_aware)
    assert_same_merge(ref, fast)


@pytest.mark.parametrize("n", [0, 1, 2500])
def test_clustered_scene_compiled_equals_reference(n):
    boxes, scores, classes = clustered_boxes(n, seed=3)
    for class_aware in (True, False):
        ref, fast = run_both(nms_mod, nms, boxes, scores, classes, class_aware=class_aware)
        np.testing.assert_array_equal(ref, fast)
    for mode in ("nms", "nmm"):
        for metric in ("iou", "ios"):
            ref, fast = run_both(nms_mod, merge_boxes, boxes, scores, classes, mode=mode, metric=metric,
                                 threshold=0.5)
            assert_same_merge(ref, fast)


# ---------------------------------------------------------------------------------------------
# The greedy definition, by brute force in plain Python floats
# ---------------------------------------------------------------------------------------------

def _overlap(a, b, ios):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    return inter, (min(area_a, area_b) if ios else (area_a + area_b) - inter)


def brute_nms(boxes, scores, classes, t, score_threshold=None, max_det=None):
    b = np.asarray(boxes, np.float32).astype(np.float64).tolist()
    s = np.asarray(scores, np.float32).astype(np.float64).tolist()
    cand = [i for i in range(len(b)) if score_threshold is None or s[i] >= score_threshold]
    cand.sort(key=lambda i: (-s[i], i))
    kept = []
    for i in cand:
        if max_det is not None and len(kept) == max_det:
            break
        suppressed = False
        for k in kept:
            if classes is not None and classes[k] != classes[i]:
                continue
            inter, union = _overlap(b[i], b[k], ios=False)
            if inter > t * union:
                suppressed = True
                break
        if not suppressed:
            kept.append(i)
    return kept


@settings(max_examples=examples(250), **WITH_IMPL)
@given(detections(max_n=80), thresholds, score_thresholds, st.one_of(st.none(), st.integers(0, 20)),
       st.booleans())
def test_nms_is_the_greedy_definition(impl, det, t, st_, max_det, class_aware):
    boxes, scores, classes = det
    with use_impl(nms_mod, impl):
        got = nms(boxes, scores, classes, iou_threshold=t, score_threshold=st_, max_detections=max_det,
                  class_aware=class_aware)
    assert got.tolist() == brute_nms(boxes, scores, classes if class_aware else None, t, st_, max_det)


def test_nms_on_a_clustered_scene_is_the_greedy_definition(impl):
    boxes, scores, classes = clustered_boxes(600, seed=11)
    with use_impl(nms_mod, impl):
        got = nms(boxes, scores, classes)
        agnostic = nms(boxes, scores, classes, class_aware=False)
    assert got.tolist() == brute_nms(boxes, scores, classes, 0.5)
    assert agnostic.tolist() == brute_nms(boxes, scores, None, 0.5)
    assert 0 < len(agnostic) <= len(got) < 600  # duplicates from overlapping tiles were removed


# ---------------------------------------------------------------------------------------------
# SAHI's GREEDYNMM (sahi/postprocess/combine.py), transcribed from its semantics
# ---------------------------------------------------------------------------------------------

def _sahi_metric(a, b, ios):
    inter, denom = _overlap(a, b, ios)
    return inter / denom if denom > 0 else 0.0  # SAHI's safe ratio (phase 1); nan > t is False (phase 2)


def sahi_greedy_nmm(boxes, scores, classes, metric, t, class_agnostic):
    """(keep index, merged box, score, category) per output, SAHI's way: greedy_nmm groups by
    `metric >= t` on the original boxes (every pair when t <= 0), then _apply_merge folds each
    member in order when has_match (`metric > t`) against the box merged so far."""
    b = [tuple(map(float, r)) for r in np.asarray(boxes, np.float64)]
    ios = metric == "ios"
    groups = [list(range(len(b)))] if class_agnostic else \
        [[i for i in range(len(b)) if classes[i] == c] for c in sorted(set(classes.tolist()))]
    out = []
    for idx in groups:
        order = sorted(idx, key=lambda i: -scores[i])  # distinct scores in these tests
        suppressed = set()
        for pos, k in enumerate(order):
            if k in suppressed:
                continue
            members = [j for j in order[pos + 1:] if j not in suppressed
                       and (t <= 0 or _sahi_metric(b[k], b[j], ios) >= t)]
            suppressed.update(members)
            box, score, cat = b[k], float(scores[k]), int(classes[k])
            for j in members:
                if _sahi_metric(box, b[j], ios) > t:
                    box = (min(box[0], b[j][0]), min(box[1], b[j][1]),
                           max(box[2], b[j][2]), max(box[3], b[j][3]))
                    cat = cat if score > scores[j] else int(classes[j])
                    score = max(score, float(scores[j]))
            out.append((k, box, score, cat))
    return sorted(out)


@settings(max_examples=examples(250), **WITH_IMPL)
@given(st.integers(0, 60), st.integers(0, 2**32 - 1), st.sampled_from(["iou", "ios"]),
       st.sampled_from([0.0, 0.25, 0.5, 0.75]), st.booleans())
def test_nmm_matches_sahi_greedy_nmm(impl, n, seed, metric, t, class_agnostic):
    # small non-negative integer boxes and dyadic thresholds: SAHI's ratios and our products
    # round the same way, so the results must agree exactly; distinct scores (ties differ on purpose)
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, 20, (n, 2))
    boxes = np.concatenate([xy, xy + rng.integers(0, 10, (n, 2))], axis=1).astype(np.float32)
    scores = (rng.permutation(n) + 1).astype(np.float32) / 64
    classes = rng.integers(0, 3, n)
    with use_impl(nms_mod, impl):
        got = merge_boxes(boxes, scores, classes, mode="nmm", metric=metric, threshold=t,
                          class_aware=not class_agnostic)
    ours = sorted((int(k), tuple(map(float, bx)), float(s), int(c))
                  for k, bx, s, c in zip(got.keep, got.boxes, got.scores, got.class_ids))
    assert ours == sahi_greedy_nmm(boxes, scores, classes, metric, t, class_agnostic)
    assert got.members.sum() == n  # every box is absorbed by exactly one group


# ---------------------------------------------------------------------------------------------
# Worked examples
# ---------------------------------------------------------------------------------------------

def test_basic_cases(impl):
    with use_impl(nms_mod, impl):
        empty = nms(np.zeros((0, 4)), np.zeros(0))
        assert empty.dtype == np.int64 and empty.shape == (0,)
        assert nms([], []).tolist() == []
        assert nms([[0, 0, 1, 1]], [0.3]).tolist() == [0]
        # identical boxes, all the same score: the lowest index survives
        same = np.tile([[5, 5, 15, 15]], (4, 1))
        assert nms(same, np.full(4, 0.5)).tolist() == [0]
        # score order, then index order on ties
        assert nms([[0, 0, 1, 1], [10, 10, 11, 11], [20, 20, 21, 21]], [0.5, 0.9, 0.5]).tolist() == [1, 0, 2]
        # touching boxes share no area; zero-area boxes never suppress nor are suppressed
        touching = [[0, 0, 10, 10], [10, 0, 20, 10], [0, 10, 10, 20]]
        assert nms(touching, [0.9, 0.8, 0.7], iou_threshold=0.0).tolist() == [0, 1, 2]
        flat = [[0, 0, 10, 10], [2, 2, 2, 8], [3, 3, 3, 3]]
        assert nms(flat, [0.1, 0.9, 0.8], iou_threshold=0.0).tolist() == [1, 2, 0]
        # nested: IoU 64/100 suppresses at 0.5, not at 0.7; exactly at the threshold is kept
        nested = [[0, 0, 10, 10], [1, 1, 9, 9]]
        assert nms(nested, [0.9, 0.8], iou_threshold=0.5).tolist() == [0]
        assert nms(nested, [0.9, 0.8], iou_threshold=0.7).tolist() == [0, 1]
        assert nms(nested, [0.9, 0.8], iou_threshold=0.64).tolist() == [0, 1]
        # classes kept apart unless class_aware=False
        assert nms(nested, [0.9, 0.8], [0, 1]).tolist() == [0, 1]
        assert nms(nested, [0.9, 0.8], [0, 1], class_aware=False).tolist() == [0]
        # score_threshold keeps score >= threshold; max_detections cuts the ranked list
        three = [[0, 0, 1, 1], [10, 10, 11, 11], [20, 20, 21, 21]]
        assert nms(three, [0.2, 0.5, 0.9], score_threshold=0.5).tolist() == [2, 1]
        assert nms(three, [0.2, 0.5, 0.9], max_detections=2).tolist() == [2, 1]
        assert nms(three, [0.2, 0.5, 0.9], max_detections=0).tolist() == []


def test_merge_examples(impl):
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 12], [50, 50, 60, 60], [40, 40, 100, 100]],
                     dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5], dtype=np.float32)
    classes = np.array([1, 1, 1, 2, 2])
    with use_impl(nms_mod, impl):
        r = merge_boxes(boxes, scores, classes, mode="nms")
        assert r.keep.tolist() == [0, 3, 4] and r.members.tolist() == [3, 1, 1]
        assert r.boxes.tolist() == boxes[[0, 3, 4]].tolist() and r.class_ids.tolist() == [1, 2, 2]
        assert r.scores.dtype == np.float32 and r.boxes.dtype == np.float32
        # IoS: the small box inside the large one is absorbed by it
        r = merge_boxes(boxes, scores, classes, mode="nms", metric="ios")
        assert r.keep.tolist() == [0, 3] and r.members.tolist() == [3, 2]
        # NMM grows the keeper's box to the union of the members that match it
        r = merge_boxes(boxes, scores, classes, mode="nmm")
        assert r.keep.tolist() == [0, 3, 4]
        assert r.boxes[0].tolist() == [0, 0, 11, 12] and r.members.tolist() == [3, 1, 1]
        assert r.scores.tolist() == scores[[0, 3, 4]].tolist()
        # max_detections keeps the first groups of the full run (members still counted in full)
        cut = merge_boxes(boxes, scores, classes, mode="nmm", max_detections=1)
        assert cut.keep.tolist() == [0] and cut.members.tolist() == [3] and len(cut) == 1
        # no class ids: one class, reported as 0
        r = merge_boxes(boxes, scores, mode="nmm", metric="ios")
        assert r.class_ids.tolist() == [0, 0] and r.members.tolist() == [3, 2]
        assert r.boxes[1].tolist() == [40, 40, 100, 100]
        # SAHI's phase 2: a member that matched the keeper (IoU 54/106) but not the box grown by
        # an earlier member (54/126) is absorbed, not merged
        chain = np.array([[0, 0, 10, 10], [2, 0, 12, 10], [-1, 0, 9, 6]], dtype=np.float32)
        r = merge_boxes(chain, [0.9, 0.8, 0.7], mode="nmm", threshold=0.5)
        assert r.keep.tolist() == [0] and r.members.tolist() == [3] and r.boxes.tolist() == [[0, 0, 12, 10]]
        # grouping is `IoU >= t` (SAHI's greedy_nmm), merging `IoU > t` (SAHI's has_match)
        half = np.array([[0, 0, 10, 10], [0, 0, 10, 20]], dtype=np.float32)
        r = merge_boxes(half, [0.9, 0.8], mode="nmm", threshold=0.5)
        assert r.members.tolist() == [2] and r.boxes.tolist() == [[0, 0, 10, 10]]
        assert merge_boxes(half, [0.9, 0.8], mode="nms", threshold=0.5).members.tolist() == [1, 1]
        # threshold 0 in "nmm" groups every pair of a class (SAHI), but merges only overlapping ones
        far = np.array([[0, 0, 2, 2], [1, 1, 3, 3], [10, 10, 12, 12]], dtype=np.float32)
        r = merge_boxes(far, [0.9, 0.8, 0.7], mode="nmm", threshold=0.0)
        assert r.keep.tolist() == [0] and r.members.tolist() == [3] and r.boxes.tolist() == [[0, 0, 3, 3]]
        empty = merge_boxes(np.zeros((0, 4)), np.zeros(0), mode="nmm")
        assert len(empty) == 0 and empty.boxes.shape == (0, 4)


@settings(max_examples=examples(60), deadline=None)
@given(detections(max_n=120), st.sampled_from(["nms", "nmm"]), st.sampled_from(["iou", "ios"]),
       st.integers(0, 30))
def test_max_detections_is_a_prefix(det, mode, metric, k):
    boxes, scores, classes = det
    full = merge_boxes(boxes, scores, classes, mode=mode, metric=metric)
    cut = merge_boxes(boxes, scores, classes, mode=mode, metric=metric, max_detections=k)
    for f in MERGE_FIELDS:
        np.testing.assert_array_equal(getattr(cut, f), getattr(full, f)[:k])
    kept = nms(boxes, scores, classes)
    np.testing.assert_array_equal(nms(boxes, scores, classes, max_detections=k), kept[:k])
    assert full.members.sum() == len(boxes)
    if mode == "nms" and metric == "iou":  # merge "nms" keeps what nms keeps
        np.testing.assert_array_equal(full.keep, kept)


def test_input_dtypes_and_layouts_agree(impl):
    boxes, scores, classes = clustered_boxes(400, seed=5)
    with use_impl(nms_mod, impl):
        want = nms(boxes, scores, classes)
        wide_types = (boxes.astype(np.float64), scores.astype(np.float64), classes.astype(np.int16))
        assert np.array_equal(nms(*wide_types), want)
        wide = np.zeros((400, 8), np.float32)
        wide[:, ::2] = boxes
        assert np.array_equal(nms(wide[:, ::2], scores, classes.astype(np.uint8)), want)
        assert np.array_equal(nms(np.asfortranarray(boxes), scores[::-1][::-1], list(classes)), want)


# ---------------------------------------------------------------------------------------------
# Bad arguments: the same clear error from both implementations
# ---------------------------------------------------------------------------------------------

GOOD_BOXES = np.array([[0, 0, 10, 10], [1, 1, 11, 11]], dtype=np.float32)
GOOD_SCORES = np.array([0.9, 0.8], dtype=np.float32)

BAD_CALLS = [
    (dict(boxes=[[0, 0, np.nan, 1], [0, 0, 1, 1]]), ValueError, "boxes must be finite"),
    (dict(boxes=[[0, 0, np.inf, 1], [0, 0, 1, 1]]), ValueError, "boxes must be finite"),
    (dict(boxes=[[0, 0, 1e39, 1], [0, 0, 1, 1]]), ValueError, "boxes must be finite"),
    (dict(boxes=[[0, 0, 1, 1], [5, 0, 4, 1]]), ValueError, "x2 >= x1 and y2 >= y1: row 1"),
    (dict(boxes=[[0, 3, 1, 2], [0, 0, 1, 1]]), ValueError, "x2 >= x1 and y2 >= y1: row 0"),
    (dict(boxes=np.zeros((2, 3))), ValueError, r"boxes must have shape \(N, 4\)"),
    (dict(boxes=np.zeros((2, 4, 1))), ValueError, r"boxes must have shape \(N, 4\)"),
    (dict(boxes=np.zeros(4)), ValueError, r"boxes must have shape \(N, 4\)"),
    (dict(boxes=np.zeros((2, 4), complex)), TypeError, "boxes must hold real numbers"),
    (dict(boxes=[["a", "b", "c", "d"]] * 2), TypeError, "boxes must hold real numbers"),
    (dict(scores=[0.5, np.nan]), ValueError, r"scores must be finite.*scores\[1\]"),
    (dict(scores=[0.5, -np.inf]), ValueError, "scores must be finite"),
    (dict(scores=[0.5]), ValueError, r"scores must have shape \(2,\)"),
    (dict(scores=[[0.5, 0.5]]), ValueError, r"scores must have shape \(2,\)"),
    (dict(scores=[True, False]), TypeError, "scores must hold real numbers"),
    (dict(class_ids=[0]), ValueError, r"class_ids must have shape \(2,\)"),
    (dict(class_ids=[0.0, 1.0]), TypeError, "class_ids must hold integers"),
    (dict(class_ids=np.array([0, 2**64 - 1], np.uint64)), ValueError, "class_ids must fit in int64"),
    (dict(score_threshold=float("nan")), ValueError, "score_threshold must not be NaN"),
    (dict(score_threshold="0.5"), TypeError, "score_threshold must be a real number"),
    (dict(max_detections=-1), ValueError, "max_detections must be >= 0"),
    (dict(max_detections=1.5), TypeError, "max_detections must be an int"),
    (dict(max_detections=True), TypeError, "max_detections must be an int"),
    (dict(class_aware="yes"), TypeError, "class_aware must be a bool"),
]
NMS_ONLY = [
    (dict(iou_threshold=-0.1), ValueError, r"iou_threshold must be in \[0, 1\]"),
    (dict(iou_threshold=1.5), ValueError, r"iou_threshold must be in \[0, 1\]"),
    (dict(iou_threshold=float("nan")), ValueError, r"iou_threshold must be in \[0, 1\]"),
    (dict(iou_threshold=None), TypeError, "iou_threshold must be a real number"),
]
MERGE_ONLY = [
    (dict(threshold=2.0), ValueError, r"threshold must be in \[0, 1\]"),
    (dict(threshold="high"), TypeError, "threshold must be a real number"),
    (dict(mode="soft"), ValueError, "mode must be one of"),
    (dict(metric="giou"), ValueError, "metric must be one of"),
]


def _call(fn, overrides):
    kwargs = dict(boxes=GOOD_BOXES, scores=GOOD_SCORES, class_ids=None)
    kwargs.update(overrides)
    return fn(kwargs.pop("boxes"), kwargs.pop("scores"), kwargs.pop("class_ids"), **kwargs)


@pytest.mark.parametrize("overrides, exc, match", BAD_CALLS + NMS_ONLY)
def test_nms_bad_arguments(impl, overrides, exc, match):
    with use_impl(nms_mod, impl), pytest.raises(exc, match=match):
        _call(nms, overrides)


@pytest.mark.parametrize("overrides, exc, match", BAD_CALLS + MERGE_ONLY)
def test_merge_bad_arguments(impl, overrides, exc, match):
    with use_impl(nms_mod, impl), pytest.raises(exc, match=match):
        _call(merge_boxes, overrides)


def test_compiled_checks_its_own_arguments():
    """Called directly, past the validation layer, the compiled module raises instead of crashing."""
    fast = compiled_of(nms_mod)
    b, s = GOOD_BOXES, GOOD_SCORES
    out = np.empty(2, np.int64)
    assert fast.nms(b, s, None, 0.5, -math.inf, -1, out) == 1
    nan_box = np.array([[0, 0, np.nan, 1], [0, 0, 1, 1]], np.float32)
    bad = [
        ((np.zeros((2, 3), np.float32), s, None, 0.5, -math.inf, -1, out), "boxes"),
        ((b.astype(np.float64), s, None, 0.5, -math.inf, -1, out), "boxes must be float32"),
        ((np.zeros((2, 8), np.float32)[:, ::2], s, None, 0.5, -math.inf, -1, out), "C-contiguous"),
        ((b, s[:1], None, 0.5, -math.inf, -1, out), "scores"),
        ((b, s, np.zeros(3, np.int64), 0.5, -math.inf, -1, out), "class_ids"),
        ((b, s, np.zeros(2, np.int32), 0.5, -math.inf, -1, out), "class_ids must be int64"),
        ((b, s, None, 0.5, -math.inf, -1, np.empty(1, np.int64)), "out"),
        ((b, s, None, 1.5, -math.inf, -1, out), "iou_threshold"),
        ((b, s, None, 0.5, math.nan, -1, out), "score_threshold"),
        ((nan_box, s, None, 0.5, -math.inf, -1, out), "finite"),
        ((np.array([[2, 0, 1, 1], [0, 0, 1, 1]], np.float32), s, None, 0.5, -math.inf, -1, out), "x2 >= x1"),
        ((b, np.array([0.5, np.nan], np.float32), None, 0.5, -math.inf, -1, out), "scores must be finite"),
    ]
    for args, match in bad:
        with pytest.raises(ValueError, match=match):
            fast.nms(*args)
    outs = [np.empty((2, 4), np.float32), np.empty(2, np.float32), np.empty(2, np.int64),
            np.empty(2, np.int64), np.empty(2, np.int64)]
    assert fast.merge(b, s, None, True, True, False, 0.5, -math.inf, *outs) == 1
    with pytest.raises(ValueError, match="out_members"):
        fast.merge(b, s, None, True, True, False, 0.5, -math.inf, *outs[:4], np.empty(1, np.int64))
    with pytest.raises(ValueError, match="out_boxes must be float32"):
        fast.merge(b, s, None, True, True, False, 0.5, -math.inf, np.empty((2, 4)), *outs[1:])
    with pytest.raises((ValueError, TypeError, BufferError)):
        readonly = np.empty(2, np.int64)
        readonly.flags.writeable = False
        fast.nms(b, s, None, 0.5, -math.inf, -1, readonly)


# ---------------------------------------------------------------------------------------------
# The box generator of the benchmarks
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 7, 1000, 5000])
def test_clustered_boxes(n):
    boxes, scores, classes = clustered_boxes(n, seed=2)
    assert boxes.shape == (n, 4) and boxes.dtype == np.float32 and boxes.flags.c_contiguous
    assert scores.shape == (n,) and scores.dtype == np.float32
    assert classes.shape == (n,) and classes.dtype == np.int64
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert (boxes >= 0).all() and (boxes <= 4096).all()
    assert ((scores > 0) & (scores <= 1)).all() and ((classes >= 0) & (classes < 3)).all()
    again = clustered_boxes(n, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip((boxes, scores, classes), again))
    if n >= 1000:
        assert not np.array_equal(clustered_boxes(n, seed=3)[0], boxes)
        side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        assert 4 <= np.median(side) <= 80  # mostly small objects
        assert len(nms(boxes, scores, classes)) < 0.7 * n  # duplicates across tiles and jitter
