"""Tile plan: both implementations, the grid rules, and argument errors."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.kernels import tiling
from edge.kernels.tiling import plan_tiles
from tests.conftest import examples, run_both, use_impl

sizes = st.integers(1, 3000)


@st.composite
def plans(draw):
    th, tw = draw(st.integers(1, 600)), draw(st.integers(1, 600))
    return (draw(sizes), draw(sizes), (th, tw),
            (draw(st.integers(0, th - 1)), draw(st.integers(0, tw - 1))))


@settings(max_examples=examples(300), deadline=None)
@given(plans())
def test_compiled_equals_reference(args):
    ref, fast = run_both(tiling, plan_tiles, *args)
    assert (ref.rows, ref.cols) == (fast.rows, fast.cols)
    np.testing.assert_array_equal(ref.origins, fast.origins)


@settings(max_examples=examples(300), deadline=None)
@given(plans())
def test_grid_covers_frame_without_padding(args):
    fh, fw, (th, tw), (oy, ox) = args
    plan = plan_tiles(fh, fw, (th, tw), (oy, ox))
    ys, xs = plan.origins[:, 0], plan.origins[:, 1]
    assert plan.n_tiles == len(plan.origins) == plan.rows * plan.cols
    # every tile inside the frame unless the frame is smaller than a tile along that axis
    assert ys.min() == 0 and xs.min() == 0
    assert (ys + min(th, fh) <= fh).all() and (xs + min(tw, fw) <= fw).all()
    # the union of tiles covers every pixel
    covered_y = np.zeros(fh, bool)
    covered_x = np.zeros(fw, bool)
    for y in np.unique(ys):
        covered_y[y:y + th] = True
    for x in np.unique(xs):
        covered_x[x:x + tw] = True
    assert covered_y.all() and covered_x.all()
    # neighbours overlap by at least the requested overlap (the last one is shifted inward: more)
    uy, ux = np.unique(ys), np.unique(xs)
    if len(uy) > 1:
        assert (np.diff(uy) <= th - oy).all() and (np.diff(uy)[:-1] == th - oy).all()
    if len(ux) > 1:
        assert (np.diff(ux) <= tw - ox).all() and (np.diff(ux)[:-1] == tw - ox).all()
    assert plan.padded == (fh < th or fw < tw)
    assert (plan.valid_h, plan.valid_w) == (min(fh, th), min(fw, tw))


def test_reference_numbers(impl):
    with use_impl(tiling, impl):
        plan = plan_tiles(4096, 4096, 256, 32)
        assert (plan.rows, plan.cols) == (19, 19)
        assert plan.origins[:3, 1].tolist() == [0, 224, 448]
        assert plan.origins[18, 1] == 4096 - 256  # last column shifted inward, not padded
        small = plan_tiles(100, 300, 256, 32)
        assert small.padded and (small.valid_h, small.valid_w) == (100, 256)
        assert small.origins.tolist() == [[0, 0], [0, 44]]
        one = plan_tiles(1, 1, 1, 0)
        assert one.origins.tolist() == [[0, 0]]
        rect = plan_tiles(500, 1000, (250, 500), (10, 20))
        assert (rect.rows, rect.cols) == (3, 3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(frame_h=0, frame_w=10, tile=4), "frame_h"),
    (dict(frame_h=10, frame_w=-1, tile=4), "frame_w"),
    (dict(frame_h=10, frame_w=10, tile=0), "tile"),
    (dict(frame_h=10, frame_w=10, tile=(4, -2)), "tile"),
    (dict(frame_h=10, frame_w=10, tile=4, overlap=4), "overlap"),
    (dict(frame_h=10, frame_w=10, tile=4, overlap=(1, 9)), "overlap"),
    (dict(frame_h=10, frame_w=10, tile=4, overlap=-1), "overlap"),
    (dict(frame_h=10.5, frame_w=10, tile=4), "frame_h"),
    (dict(frame_h=10, frame_w=10, tile="4"), "tile"),
    (dict(frame_h=10, frame_w=10, tile=(1, 2, 3)), "tile"),
    (dict(frame_h=True, frame_w=10, tile=4), "frame_h"),
])
def test_bad_arguments_name_the_argument(impl, kwargs, match):
    with use_impl(tiling, impl), pytest.raises(ValueError, match=match):
        plan_tiles(**kwargs)


def test_compiled_rejects_bad_buffer_without_crashing():
    from tests.conftest import compiled_of
    fast = compiled_of(tiling)
    with pytest.raises(ValueError):
        fast.plan_tiles(10, 10, 4, 4, 0, 0, np.empty((1, 2), np.int64))  # needs 9 rows
    with pytest.raises(ValueError):
        fast.plan_tiles(10, 10, 4, 4, 4, 0, np.empty((9, 2), np.int64))
    with pytest.raises((ValueError, TypeError)):
        fast.plan_tiles(10, 10, 4, 4, 0, 0, np.empty((9, 2), np.int32))
