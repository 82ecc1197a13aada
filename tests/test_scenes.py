"""models.scenes: the synthetic sea-scene generator (determinism, formats, labels, tiled generation)."""

import numpy as np
import pytest

from models import scenes
from models.scenes import Scene, generate_scene, scene_batch


def _assert_same(a: Scene, b: Scene):
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.classes, b.classes)


def test_deterministic_per_seed():
    for seed in (0, 7, 123456):
        _assert_same(generate_scene(seed), generate_scene(seed))
    a, b = generate_scene(1), generate_scene(2)
    assert not np.array_equal(a.image, b.image)


@pytest.mark.parametrize("bands, channels, dtype, top", [("rgb", 3, np.uint8, 255), ("bgrn", 4, np.uint16, 4095)])
def test_dtype_shape_and_range(bands, channels, dtype, top):
    for seed in range(6):
        s = generate_scene(seed, 96, 160, bands=bands, land_probability=0.5, cloud_probability=0.5)
        assert s.image.shape == (96, 160, channels) and s.image.dtype == dtype
        assert int(s.image.max()) <= top
        assert s.boxes.dtype == np.float32 and s.boxes.shape == (len(s.classes), 4)
        assert s.classes.dtype == np.int64 and np.all(s.classes == 0)


def test_bgrn_sea_is_dark_in_nir_and_same_scene_as_rgb():
    s4 = generate_scene(5, bands="bgrn", cloud_probability=0, land_probability=0, ships=(0, 0), glints=(0, 0))
    s3 = generate_scene(5, cloud_probability=0, land_probability=0, ships=(0, 0), glints=(0, 0))
    b, g, r, nir = (s4.image[..., k].astype(float).mean() for k in range(4))
    assert nir < 0.5 * min(b, g)                      # water absorbs NIR
    # Same layout in both modes: the 12-bit R, G, B and the 8-bit image agree to rounding.
    rgb_from_12bit = s4.image[..., [2, 1, 0]].astype(float) * 255 / 4095
    assert np.abs(rgb_from_12bit - s3.image).max() <= 1.0


def test_ships_bright_in_nir():
    s = generate_scene(11, bands="bgrn", ships=(6, 6), dark_ship_fraction=1.0, cloud_probability=0,
                       land_probability=0, glints=(0, 0), ship_length=(20, 40))
    assert len(s.boxes)
    sea_nir = np.median(s.image[..., 3])
    for x1, y1, x2, y2 in s.boxes.astype(int):
        assert s.image[y1:y2 + 1, x1:x2 + 1, 3].max() > 2 * sea_nir


def test_boxes_inside_image_and_non_degenerate():
    for seed in range(40):
        s = generate_scene(seed, 128, 200)
        b = s.boxes
        assert np.all(b[:, 0] >= 0) and np.all(b[:, 1] >= 0)
        assert np.all(b[:, 2] <= 200) and np.all(b[:, 3] <= 128)
        assert np.all(b[:, 2] - b[:, 0] >= scenes.MIN_BOX_SIDE)
        assert np.all(b[:, 3] - b[:, 1] >= scenes.MIN_BOX_SIDE)
        assert len(b) + s.hidden_by_cloud + s.hidden_by_nodata + s.cut_by_edge == s.ships_total


def test_full_cloud_cover_hides_every_ship():
    for seed in range(5):
        s = generate_scene(seed, ships=(8, 8), cloud_probability=1.0, cloud_cover=(1.0, 1.0))
        assert s.ships_total > 0
        assert len(s.boxes) == 0 and s.hidden_by_cloud + s.cut_by_edge == s.ships_total
        clear = generate_scene(seed, ships=(8, 8), cloud_probability=0.0)
        assert len(clear.boxes) == clear.ships_total - clear.cut_by_edge > 0


def test_partial_clouds_hide_some_ships():
    hidden = labelled = 0
    for seed in range(30):
        s = generate_scene(seed, ships=(10, 10), cloud_probability=1.0, cloud_cover=(0.5, 0.5))
        hidden += s.hidden_by_cloud
        labelled += len(s.boxes)
    assert hidden > 0 and labelled > 0


def test_glints_are_not_labelled():
    for seed in range(10):
        s = generate_scene(seed, ships=(0, 0), glints=(30, 30), cloud_probability=0)
        assert s.glints > 0 and len(s.boxes) == 0
        # Glints add bright specks but not labels: same ships, same boxes as without glints.
        with_g = generate_scene(seed, glints=(30, 30), cloud_probability=0)
        without = generate_scene(seed, glints=(0, 0), cloud_probability=0)
        np.testing.assert_array_equal(with_g.boxes, without.boxes)
        assert len(with_g.boxes) == with_g.ships_total - with_g.cut_by_edge


def test_block_size_does_not_change_the_scene():
    kw = dict(ships=(20, 20), cloud_probability=1.0, cloud_cover=(0.3, 0.3), land_probability=1.0,
              nodata_probability=1.0, glints=(20, 20))
    for bands in ("rgb", "bgrn"):
        a = generate_scene(3, 1500, 1300, bands=bands, block=1024, **kw)
        b = generate_scene(3, 1500, 1300, bands=bands, block=512, **kw)
        c = generate_scene(3, 1500, 1300, bands=bands, block=300, **kw)   # not a multiple of the noise tile
        _assert_same(a, b)
        _assert_same(a, c)
        assert a.ships_total > 100 and len(a.boxes) > 0
        assert a.land_edge is not None and a.nodata_edge is not None


def test_memmap_output(tmp_path):
    shape = (700, 900, 4)
    mm = np.lib.format.open_memmap(tmp_path / "frame.npy", mode="w+", dtype=np.uint16, shape=shape)
    s = generate_scene(9, 700, 900, bands="bgrn", out=mm, block=256)
    assert s.image is mm
    mm.flush()
    ref = generate_scene(9, 700, 900, bands="bgrn")
    np.testing.assert_array_equal(np.load(tmp_path / "frame.npy"), ref.image)
    np.testing.assert_array_equal(s.boxes, ref.boxes)


def test_out_argument_is_checked():
    with pytest.raises(ValueError, match="out"):
        generate_scene(0, 64, 64, out=np.zeros((64, 64, 3), np.uint16))
    with pytest.raises(ValueError, match="out"):
        generate_scene(0, 64, 64, bands="bgrn", out=np.zeros((64, 64, 3), np.uint16))
    with pytest.raises(ValueError, match="bands"):
        generate_scene(0, bands="rgbn")
    with pytest.raises(ValueError, match="cloud_cover"):
        generate_scene(0, cloud_cover=(0.5, 2.0))
    with pytest.raises(TypeError, match="shipz"):
        generate_scene(0, shipz=(1, 2))


def test_land_never_holds_ships():
    seen = 0
    for seed in range(25):
        p = scenes._params(dict(land_probability=1.0, ships=(15, 15)))
        lay = scenes._Layout(seed, 256, 256, p)
        if not lay.n_ships:
            continue
        # Every hull pixel centre (pixels under the hull polygon) lies on the sea side of the coast.
        for i in range(lay.n_ships):
            x0, y0, x1, y1 = (int(v) for v in lay.hull_rect[i])
            a, b = scenes._local(lay, i, x0, y0, x1, y1)
            inside = (np.abs(a) <= lay.L[i] / 2) & (np.abs(b) <= lay.W[i] / 2)
            yy, xx = np.nonzero(inside)
            if len(yy):
                assert not lay.on_land(xx + x0 + 0.5, yy + y0 + 0.5).any()
                seen += 1
        # And the rendered image: labelled box centres are sea (dark in NIR), land is bright in NIR.
        s = generate_scene(seed, bands="bgrn", land_probability=1.0, ships=(15, 15), cloud_probability=0)
        for x1, y1, x2, y2 in s.boxes:
            assert not lay.on_land(np.array([(x1 + x2) / 2]), np.array([(y1 + y2) / 2])).any()
    assert seen > 50


def test_scene_batch():
    images, boxes, classes = scene_batch([4, 5, 6], size=64)
    assert images.shape == (3, 64, 64, 3) and images.dtype == np.uint8
    for i, seed in enumerate((4, 5, 6)):
        s = generate_scene(seed, 64, 64)
        np.testing.assert_array_equal(images[i], s.image)
        np.testing.assert_array_equal(boxes[i], s.boxes)
        np.testing.assert_array_equal(classes[i], s.classes)


def test_tiny_and_odd_sizes():
    for h, w in ((1, 1), (3, 700), (257, 33)):
        s = generate_scene(2, h, w)
        assert s.image.shape == (h, w, 3)
