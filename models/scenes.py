"""Synthetic sea scenes with ground-truth ship boxes (training, evaluation, demo, simulator).

A scene is a global, per-seed layout (sea tint, ships, wakes, glints, clouds, land, no-data strip) rendered
block by block into one output array. Every random choice either comes from the layout (drawn once per seed and
frame size) or from a function of global pixel coordinates (hashed value-noise lattices, speckle drawn per fixed
256 px noise tile), and every per-pixel operation is elementwise float32, so the image and the labels are
identical whatever the block size, and memory beyond the output stays at one block.

Render order per block: sea (low-frequency field) -> land -> wakes -> glints -> hulls -> clouds -> speckle ->
no-data. Materials are defined as 4-band reflectance-like values (B, G, R, NIR in 0..1); bands="rgb" picks R, G, B
and scales to 0..255 uint8, bands="bgrn" keeps all four and scales to 12-bit 0..4095 uint16.

Labels: the axis-aligned box of each rotated ship hull (never the wake), clipped to the frame. A ship is not
labelled when clipping leaves less than MIN_KEPT_BOX of its box, or when less than MIN_VISIBLE of its in-frame hull
pixels are clear of opaque cloud / no-data. Glints are never labelled; ships are never placed on land.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Scene", "generate_scene", "scene_batch", "DEFAULTS"]

#: Speckle is drawn per fixed noise tile from (seed, tile row, tile col): block-size independent.
NOISE_TILE = 256
#: Object counts (ships, glints) are given per this reference area (one 256 x 256 training tile).
REF_AREA = 256 * 256
#: Default render block edge for big frames (memory: a few float32 planes of this size).
DEFAULT_BLOCK = 1024

#: Cloud alpha at or above which a hull pixel counts as hidden.
OPAQUE = 0.5
#: A ship stays labelled only if at least this fraction of its in-frame hull pixels is clear.
MIN_VISIBLE = 0.5
#: A ship cut by the frame edge stays labelled only if its clipped box keeps this fraction of the box area ...
MIN_KEPT_BOX = 0.5
#: ... and both clipped box sides are at least this long (pixels).
MIN_BOX_SIDE = 2.0

#: Kelvin wake half-angle (deep water, any speed): 19.47 degrees.
KELVIN_HALF_ANGLE = math.asin(1.0 / 3.0)
#: Minimum hull width in pixels, so the thinnest hull still has pixel centres inside it.
MIN_HULL_WIDTH = 2.0
#: Ships shorter than this are always bright (a dark 8 px hull in speckle is not a fair label).
MIN_DARK_SHIP_LENGTH = 16.0
#: Glint stamps are (2 * GLINT_RADIUS + 1)^2 pixels.
GLINT_RADIUS = 3
#: Ships keep this distance (pixels) from the coastline.
COAST_MARGIN = 4.0

BANDS = {"rgb": ([2, 1, 0], 255.0, np.uint8), "bgrn": ([0, 1, 2, 3], 4095.0, np.uint16)}

#: Keyword parameters of generate_scene and their defaults (ranges are (low, high), drawn uniformly).
DEFAULTS = dict(
    ships=(0, 10),              # ship count range per REF_AREA (scaled by frame area)
    ship_length=(8.0, 60.0),    # hull length, pixels
    ship_aspect=(0.14, 0.3),    # hull width / length
    dark_ship_fraction=0.15,    # share of ships darker than the sea (in the visible bands)
    wake_probability=0.7,       # share of ships under way (with a wake)
    glints=(0, 12),             # unlabelled bright specks per REF_AREA
    cloud_probability=0.35,     # share of scenes with clouds
    cloud_cover=(0.05, 0.6),    # target cloud fraction of a cloudy scene (1.0 = overcast)
    land_probability=0.15,      # share of scenes with a land margin along one edge
    land_depth=(0.08, 0.35),    # land margin depth, fraction of the frame side across it
    nodata_probability=0.0,     # share of scenes with a zero strip (swath edge) along one edge
    nodata_width=(0.05, 0.3),   # strip width, fraction of the frame side across it
)

# Random streams (SeedSequence entropy after the seed): layout, speckle tiles, noise lattices.
_STREAM_LAYOUT, _STREAM_SPECKLE, _STREAM_LATTICE = 1, 2, 3
_EDGES = ("top", "bottom", "left", "right")

# Low-frequency fields: (cell size px, amplitude) per octave.
_SEA_OCTAVES = ((160, 0.10), (48, 0.04))
_CLOUD_OCTAVES = ((512, 1.0), (256, 0.6), (128, 0.36), (64, 0.22), (32, 0.13), (16, 0.08), (8, 0.05))
_CLOUD_COARSE = 4         # cloud octaves with cells >= 64 px are evaluated every 4 px and interpolated
_SEA_STEP = 8             # the sea field (cells >= 48 px) is evaluated every 8 px and interpolated
_LAND_TEX_OCTAVES = ((48, 0.18), (12, 0.10))
_LAND_MIX_OCTAVES = ((128, 0.8), (32, 0.4))
_COAST_OCTAVES = ((200, 1.0), (40, 0.3), (8, 0.06))   # amplitudes scaled by the coast wiggle
_CLOUD_SAMPLES = 48        # sample grid side for the cloud-cover threshold (quantile of the cloud field)

_VEGETATION = np.array([0.06, 0.11, 0.08, 0.45], np.float32)
_SOIL = np.array([0.14, 0.19, 0.24, 0.33], np.float32)
_SAND = np.array([0.42, 0.47, 0.52, 0.50], np.float32)
_CLOUD = np.array([0.90, 0.92, 0.93, 0.88], np.float32)
_FOAM = np.array([0.55, 0.55, 0.55, 0.22], np.float32)


@dataclass
class Scene:
    """One generated scene. image: (H, W, 3) uint8 RGB or (H, W, 4) uint16 12-bit B, G, R, NIR.
    boxes: (N, 4) float32 x1, y1, x2, y2 (pixel edges, clipped) of labelled ships; classes: (N,) int64, all 0."""
    image: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    seed: int
    bands: str
    ships_total: int = 0        # ships placed (labelled + hidden + cut by the frame edge)
    hidden_by_cloud: int = 0
    hidden_by_nodata: int = 0
    cut_by_edge: int = 0
    glints: int = 0
    cloud_cover: float = 0.0    # target cover fraction (0: no clouds)
    land_edge: str | None = None
    nodata_edge: str | None = None


# --- value noise on a hashed lattice: a pure function of (key, global pixel coordinates) -------------------------

_H1, _H2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _lattice(key, rows, cols):
    """Uniform(-1, 1) float32 values at integer lattice points (splitmix64 finaliser of a row/col/key mix)."""
    z = (rows.astype(np.uint64)[:, None] * _H1) ^ (cols.astype(np.uint64)[None, :] * _H2)
    z ^= key
    z ^= z >> np.uint64(31)
    z *= _M1
    z ^= z >> np.uint64(29)
    z *= _M2
    z ^= z >> np.uint64(32)
    return (z >> np.uint64(40)).astype(np.float32) * np.float32(2.0 / (1 << 24)) - np.float32(1.0)


def _axis(c, cell, smooth=True):
    """Lattice lines, index into them and float32 weight for ascending coordinates c (pixel units) on one axis."""
    u = c / cell
    i = np.floor(u).astype(np.int64)
    f = u - i
    s = (f * f * (3.0 - 2.0 * f) if smooth else f).astype(np.float32)
    # Only the lattice lines actually used: a short range for a block, a sparse set for a sample grid.
    if i[-1] - i[0] + 2 <= 2 * len(i):
        lines = np.arange(i[0], i[-1] + 2)
        j = i - i[0]
    else:
        lines = np.unique(np.concatenate([i, i + 1]))
        j = np.searchsorted(lines, i)
    return lines, j, s


def _interp(grid, jy, sy, jx, sx):
    """Separable interpolation of grid at (jy + sy, jx + sx): along x on the few grid rows, then along y.
    Elementwise float32, so a pixel's value does not depend on which block it is computed in."""
    row = grid[:, jx]
    row += (grid[:, jx + 1] - row) * sx
    out = row[jy]
    out += (row[jy + 1] - out) * sy[:, None]
    return out


def _fbm(keys, octaves, cy, cx):
    """Sum of smooth value-noise octaves on the grid cy x cx (global pixel-centre coordinates, float64)."""
    total = None
    for key, (cell, amp) in zip(keys, octaves):
        ly, jy, sy = _axis(cy, cell)
        lx, jx, sx = _axis(cx, cell)
        lat = _lattice(key, ly, lx)
        lat *= np.float32(amp)
        v = _interp(lat, jy, sy, jx, sx)
        total = v if total is None else total + v
    return total


def _fbm_pixels(keys, octaves, ys, xs, step=1):
    """_fbm at the centres of pixel rows ys x cols xs (int, ascending). step > 1: evaluate on the global grid of
    every step-th pixel edge and interpolate linearly (for fields smooth at that scale: step^2 times cheaper)."""
    cy, cx = ys + 0.5, xs + 0.5
    if step == 1:
        return _fbm(keys, octaves, cy, cx)
    ly, jy, sy = _axis(cy, step, smooth=False)
    lx, jx, sx = _axis(cx, step, smooth=False)
    grid = _fbm(keys, octaves, ly * float(step), lx * float(step))
    return _interp(grid, jy, sy, jx, sx)


def _fbm_1d(keys, octaves, s):
    """_fbm along one line of integer positions s (pixel centres)."""
    return _fbm(keys, octaves, np.full(1, 0.5), s + 0.5)[0]


# --- the per-seed layout --------------------------------------------------------------------------------------------

class _Layout:
    """Everything about a scene that is not a per-pixel function: drawn once per (seed, frame size, params)."""

    def __init__(self, seed, height, width, p):
        self.seed, self.h, self.w = seed, height, width
        ss = np.random.SeedSequence([seed, _STREAM_LATTICE])
        keys = iter(ss.generate_state(32, np.uint64))
        take = lambda octs: [np.uint64(next(keys)) for _ in octs]  # noqa: E731
        self.sea_keys, self.cloud_keys = take(_SEA_OCTAVES), take(_CLOUD_OCTAVES)
        self.tex_keys, self.mix_keys, self.coast_keys = take(_LAND_TEX_OCTAVES), take(_LAND_MIX_OCTAVES), \
            take(_COAST_OCTAVES)
        rng = np.random.default_rng([seed, _STREAM_LAYOUT])
        area = height * width / REF_AREA

        # Sea: a blue-green tint, dark in NIR; multiplicative speckle.
        b = rng.uniform(0.14, 0.30)
        self.sea = np.array([b, b * rng.uniform(0.8, 1.2), b * rng.uniform(0.4, 0.8), rng.uniform(0.02, 0.05)],
                            np.float32)
        self.speckle = np.float32(rng.uniform(0.03, 0.09))

        # Land margin along one edge; coast(s) = depth of land at position s along that edge.
        self.land_edge = None
        if rng.random() < p["land_probability"]:
            self.land_edge = _EDGES[rng.integers(4)]
            across = height if self.land_edge in ("top", "bottom") else width
            along = width if self.land_edge in ("top", "bottom") else height
            self.coast_depth = rng.uniform(*p["land_depth"]) * across
            self.coast_wiggle = min(0.08 * along, 0.5 * self.coast_depth) * rng.uniform(0.5, 1.0)
            self.coast_max = self.coast_depth + self.coast_wiggle * sum(a for _, a in _COAST_OCTAVES) + 1.0
            self.land_tint = np.float32(rng.uniform(0.8, 1.25))
            self.beach = np.float32(rng.uniform(0.0, 4.0))

        # Clouds: a thresholded fractal field; the threshold is the field's (1 - cover) quantile on a grid.
        self.cloud_cover = 0.0
        if rng.random() < p["cloud_probability"]:
            self.cloud_cover = float(rng.uniform(*p["cloud_cover"]))
        if self.cloud_cover > 0.0:
            gy = ((np.arange(_CLOUD_SAMPLES) + 0.5) * height / _CLOUD_SAMPLES).astype(np.int64)
            gx = ((np.arange(_CLOUD_SAMPLES) + 0.5) * width / _CLOUD_SAMPLES).astype(np.int64)
            sample = self.cloud_field(gy, gx).ravel()
            self.cloud_soft = np.float32(0.03 * sample.std() + 1e-6)  # edge ramp: a few pixels wide
            self.cloud_thr = np.float32(-np.inf) if self.cloud_cover >= 1.0 else \
                np.float32(np.quantile(sample, 1.0 - self.cloud_cover))

        # No-data strip (zeros) along one edge, like a swath edge.
        self.nodata_edge = None
        if rng.random() < p["nodata_probability"]:
            self.nodata_edge = _EDGES[rng.integers(4)]
            across = height if self.nodata_edge in ("top", "bottom") else width
            self.nodata_px = max(1, int(rng.uniform(*p["nodata_width"]) * across))

        self._place_ships(rng, area, p)
        self._place_glints(rng, area, p)

    def cloud_field(self, ys, xs):
        """The fractal cloud field at pixel rows ys x cols xs; cloud where it exceeds cloud_thr."""
        n = sum(1 for cell, _ in _CLOUD_OCTAVES if cell >= 64)
        f = _fbm_pixels(self.cloud_keys[:n], _CLOUD_OCTAVES[:n], ys, xs, _CLOUD_COARSE)
        f += _fbm_pixels(self.cloud_keys[n:], _CLOUD_OCTAVES[n:], ys, xs)
        return f

    # Land: t = distance from the land edge, s = position along it (pixel centres).
    def _ts(self, x, y):
        e = self.land_edge
        if e == "top":
            return y, x
        if e == "bottom":
            return self.h - y, x
        if e == "left":
            return x, y
        return self.w - x, y

    def coast(self, s_idx):
        """Land depth (pixels from the land edge) at integer positions s_idx along the edge."""
        return (np.float32(self.coast_depth)
                + np.float32(self.coast_wiggle) * _fbm_1d(self.coast_keys, _COAST_OCTAVES, s_idx))

    def on_land(self, x, y, margin=0.0):
        """Boolean per point (float pixel coordinates): within `margin` of land or on it."""
        if self.land_edge is None:
            return np.zeros(np.shape(x), bool)
        t, s = self._ts(np.asarray(x, np.float64), np.asarray(y, np.float64))
        si = np.clip(np.floor(s), -1e9, 1e9).astype(np.int64).ravel()
        order = np.argsort(si, kind="stable")
        c = np.empty(si.size, np.float32)
        if si.size:
            c[order] = self.coast(si[order])
        return (t.ravel() < c + margin).reshape(np.shape(x))

    def _place_ships(self, rng, area, p):
        lo, hi = p["ships"]
        n = int(rng.integers(int(round(lo * area)), int(round(hi * area)) + 1))
        m = 3 * n + 8   # candidates: some land on land or too close to another ship
        L = rng.uniform(*p["ship_length"], m)
        # Lengths skew short (more small boats than tankers): square of a uniform between the bounds.
        L = p["ship_length"][0] + (L - p["ship_length"][0]) ** 2 / max(p["ship_length"][1] - p["ship_length"][0], 1e-9)
        W = np.maximum(MIN_HULL_WIDTH, L * rng.uniform(*p["ship_aspect"], m))
        theta = rng.uniform(0.0, 2 * math.pi, m)
        cx = rng.uniform(-0.3 * L, self.w + 0.3 * L)
        cy = rng.uniform(-0.3 * L, self.h + 0.3 * L)
        dark = (rng.random(m) < p["dark_ship_fraction"]) & (L >= MIN_DARK_SHIP_LENGTH)
        grey = rng.uniform(0.45, 0.95, m)
        tint = rng.uniform(0.93, 1.07, (m, 4))
        color = np.where(dark[:, None], self.sea[None, :] * rng.uniform(0.35, 0.6, (m, 1)), grey[:, None]) * tint
        color[:, 3] = np.where(dark, rng.uniform(0.10, 0.20, m), grey * rng.uniform(0.8, 1.0, m))  # bright in NIR
        bow = L * rng.uniform(0.1, 0.25, m)
        sup_at = rng.uniform(-0.4, 0.1, m)            # superstructure start, fraction of L from the centre
        sup_len = rng.uniform(0.1, 0.35, m)
        sup_gain = rng.uniform(0.7, 1.3, m)
        moving = rng.random(m) < p["wake_probability"]
        wake_len = L * rng.uniform(1.0, 3.0, m) * moving
        wake_gain = rng.uniform(0.15, 0.45, m)
        arm_gain = rng.uniform(0.0, 0.6, m)

        c, s = np.cos(theta), np.sin(theta)
        hl, hw = L / 2, W / 2
        # Hull polygon (local along a, across b): stern corners, bow shoulders, bow tip.
        la = np.stack([-hl, -hl, hl - bow, hl - bow, hl], 1)
        lb = np.stack([-hw, hw, hw, -hw, np.zeros(m)], 1)
        px = cx[:, None] + la * c[:, None] - lb * s[:, None]
        py = cy[:, None] + la * s[:, None] + lb * c[:, None]
        # Points checked against land: polygon corners, side midpoints, centre.
        chk_x = np.concatenate([px, (px + np.roll(px, 1, 1)) / 2, cx[:, None]], 1)
        chk_y = np.concatenate([py, (py + np.roll(py, 1, 1)) / 2, cy[:, None]], 1)
        ok = ~self.on_land(chk_x, chk_y, COAST_MARGIN).any(1)

        # Greedy spacing on a coarse grid: hulls never overlap (centre distance > half the length sum + 2 px).
        cell = 2 * p["ship_length"][1] + 4
        grid, keep = {}, []
        for i in np.flatnonzero(ok):
            if len(keep) == n:
                break
            gx, gy = int(cx[i] // cell), int(cy[i] // cell)
            near = [j for dx in (-1, 0, 1) for dy in (-1, 0, 1) for j in grid.get((gx + dx, gy + dy), ())]
            if any(math.hypot(cx[i] - cx[j], cy[i] - cy[j]) < 0.5 * (L[i] + L[j]) + 2.0 for j in near):
                continue
            grid.setdefault((gx, gy), []).append(i)
            keep.append(i)
        k = np.asarray(keep, np.int64)
        self.n_ships = len(k)
        f32 = lambda a: np.asarray(a[k], np.float32)  # noqa: E731
        self.cx, self.cy, self.L, self.W, self.bow = f32(cx), f32(cy), f32(L), f32(W), f32(bow)
        self.cos, self.sin = f32(c), f32(s)
        self.color = np.asarray(color[k], np.float32)
        self.sup_a0 = f32(sup_at * L)
        self.sup_a1 = f32((sup_at + sup_len) * L)
        self.sup_gain = f32(sup_gain)
        self.wake_len, self.wake_gain, self.arm_gain = f32(wake_len), f32(wake_gain), f32(arm_gain)
        # Labelled box = axis-aligned box of the hull polygon (pixel-edge coordinates).
        self.box = np.stack([px[k].min(1), py[k].min(1), px[k].max(1), py[k].max(1)], 1)
        pad = 2  # anti-aliasing ramp
        self.hull_rect = np.stack([np.floor(self.box[:, 0]) - pad, np.floor(self.box[:, 1]) - pad,
                                   np.ceil(self.box[:, 2]) + pad, np.ceil(self.box[:, 3]) + pad], 1).astype(np.int64)
        # Wake region: the stern plus the wedge behind it.
        wl = wake_len[k]
        spread = wl * math.tan(KELVIN_HALF_ANGLE) + W[k] + 2
        wa = np.stack([-hl[k], -hl[k] - wl, -hl[k] - wl], 1)
        wb = np.stack([np.zeros(len(k)), spread, -spread], 1)
        wx = cx[k][:, None] + wa * c[k][:, None] - wb * s[k][:, None]
        wy = cy[k][:, None] + wa * s[k][:, None] + wb * c[k][:, None]
        wx = np.concatenate([wx, px[k]], 1)
        wy = np.concatenate([wy, py[k]], 1)
        self.wake_rect = np.stack([np.floor(wx.min(1)) - pad, np.floor(wy.min(1)) - pad,
                                   np.ceil(wx.max(1)) + pad, np.ceil(wy.max(1)) + pad], 1).astype(np.int64)
        self.wake_rect[wl <= 0] = 0  # no wake: empty rectangle
        # Per-ship pixel counts accumulated over blocks (integers: exact whatever the block order).
        self.hull_px = np.zeros(len(k), np.int64)
        self.cloud_px = np.zeros(len(k), np.int64)
        self.nodata_px_hit = np.zeros(len(k), np.int64)

    def _place_glints(self, rng, area, p):
        lo, hi = p["glints"]
        n = int(rng.integers(int(round(lo * area)), int(round(hi * area)) + 1))
        gx = rng.uniform(0, self.w, n)
        gy = rng.uniform(0, self.h, n)
        sigma = rng.uniform(0.4, 1.1, n)
        peak = rng.uniform(0.5, 1.0, n)
        sea = ~self.on_land(gx, gy)
        self.gx, self.gy = gx[sea].astype(np.float32), gy[sea].astype(np.float32)
        self.gsigma, self.gpeak = sigma[sea].astype(np.float32), peak[sea].astype(np.float32)
        self.n_glints = int(sea.sum())

    def nodata_rect(self):
        """(x0, y0, x1, y1) of the zero strip, or None."""
        e = self.nodata_edge
        if e is None:
            return None
        k = self.nodata_px
        return {"top": (0, 0, self.w, k), "bottom": (0, self.h - k, self.w, self.h),
                "left": (0, 0, k, self.h), "right": (self.w - k, 0, self.w, self.h)}[e]


# --- rendering one block ---------------------------------------------------------------------------------------------

def _overlap(rect, x0, y0, x1, y1):
    """Rows (n, 4) rect x0,y0,x1,y1 clipped to the block; empty ones have x1 <= x0 or y1 <= y0."""
    r = rect.copy()
    np.maximum(r[:, 0], x0, out=r[:, 0])
    np.maximum(r[:, 1], y0, out=r[:, 1])
    np.minimum(r[:, 2], x1, out=r[:, 2])
    np.minimum(r[:, 3], y1, out=r[:, 3])
    return r, np.flatnonzero((r[:, 2] > r[:, 0]) & (r[:, 3] > r[:, 1]))


def _local(lay, i, rx0, ry0, rx1, ry1):
    """Along-hull (a, towards the bow) and across-hull (b) coordinates of the pixel centres of a region."""
    X = (np.arange(rx0, rx1, dtype=np.float32) + np.float32(0.5) - lay.cx[i])[None, :]
    Y = (np.arange(ry0, ry1, dtype=np.float32) + np.float32(0.5) - lay.cy[i])[:, None]
    c, s = lay.cos[i], lay.sin[i]
    return X * c + Y * s, Y * c - X * s


def _speckle(seed, x0, y0, x1, y1):
    """Uniform [0, 1) float32 noise for the block, cut from fixed NOISE_TILE tiles seeded by tile index
    (uniform, not normal: 4x cheaper, and speckle looks the same)."""
    T = NOISE_TILE
    n = np.empty((y1 - y0, x1 - x0), np.float32)
    for ty in range(y0 // T, (y1 - 1) // T + 1):
        for tx in range(x0 // T, (x1 - 1) // T + 1):
            tile = np.random.default_rng([seed, _STREAM_SPECKLE, ty, tx]).random((T, T), np.float32)
            a0, a1 = max(y0, ty * T), min(y1, (ty + 1) * T)
            b0, b1 = max(x0, tx * T), min(x1, (tx + 1) * T)
            n[a0 - y0:a1 - y0, b0 - x0:b1 - x0] = tile[a0 - ty * T:a1 - ty * T, b0 - tx * T:b1 - tx * T]
    return n


def _render_block(lay, x0, y0, x1, y1, chans):
    h, w = y1 - y0, x1 - x0
    ys, xs = np.arange(y0, y1), np.arange(x0, x1)
    nb = len(chans)
    sea = lay.sea[chans]
    lum = _fbm_pixels(lay.sea_keys, _SEA_OCTAVES, ys, xs, _SEA_STEP)
    lum += np.float32(1.0)
    planes = np.empty((nb, h, w), np.float32)
    for k in range(nb):
        np.multiply(lum, sea[k], out=planes[k])

    if lay.land_edge is not None:
        _render_land(lay, planes, x0, y0, x1, y1, chans)

    cloud = None
    if lay.cloud_cover > 0.0:
        f = lay.cloud_field(ys, xs)
        f -= lay.cloud_thr
        cloud = np.clip(f / lay.cloud_soft, 0.0, 1.0)

    if lay.n_ships:
        _render_wakes(lay, planes, x0, y0, x1, y1, chans)
    if lay.n_glints:
        _render_glints(lay, planes, x0, y0, x1, y1, chans)
    if lay.n_ships:
        _render_hulls(lay, planes, cloud, x0, y0, x1, y1, chans)

    if cloud is not None:
        # Cloud tops: brighter towards the thick core; alpha-blended over everything below.
        core = np.clip(f / (12 * lay.cloud_soft), 0.0, 1.0)
        core *= np.float32(0.2)
        core += np.float32(0.78)
        for k in range(nb):
            top = core * _CLOUD[chans[k]]
            top -= planes[k]
            top *= cloud
            planes[k] += top

    # Multiplicative speckle with standard deviation lay.speckle (uniform: width sqrt(12) sigma), damped in cloud.
    m = _speckle(lay.seed, x0, y0, x1, y1)
    m -= np.float32(0.5)
    if cloud is not None:
        m *= np.float32(1.0) - np.float32(0.6) * cloud
    m *= lay.speckle * np.float32(math.sqrt(12.0))
    m += np.float32(1.0)
    planes *= m
    return planes


def _render_land(lay, planes, x0, y0, x1, y1, chans):
    # Sub-rectangle of the block that can hold land (t below the deepest coast point).
    d = int(math.ceil(lay.coast_max)) + 1
    e = lay.land_edge
    lx0, ly0, lx1, ly1 = {"top": (0, 0, lay.w, d), "bottom": (0, lay.h - d, lay.w, lay.h),
                          "left": (0, 0, d, lay.h), "right": (lay.w - d, 0, lay.w, lay.h)}[e]
    rx0, ry0, rx1, ry1 = max(x0, lx0), max(y0, ly0), min(x1, lx1), min(y1, ly1)
    if rx1 <= rx0 or ry1 <= ry0:
        return
    ys, xs = np.arange(ry0, ry1), np.arange(rx0, rx1)
    yc, xc = ys.astype(np.float32) + np.float32(0.5), xs.astype(np.float32) + np.float32(0.5)
    if e in ("top", "bottom"):
        t = (yc if e == "top" else np.float32(lay.h) - yc)[:, None]
        inland = lay.coast(xs)[None, :] - t
    else:
        t = (xc if e == "left" else np.float32(lay.w) - xc)[None, :]
        inland = lay.coast(ys)[:, None] - t
    alpha = np.clip(inland + np.float32(0.5), 0.0, 1.0)
    tex = _fbm_pixels(lay.tex_keys, _LAND_TEX_OCTAVES, ys, xs)
    tex += np.float32(1.0)
    tex *= lay.land_tint
    mix = _fbm_pixels(lay.mix_keys, _LAND_MIX_OCTAVES, ys, xs, 4)
    mix += np.float32(0.5)
    np.clip(mix, 0.0, 1.0, out=mix)
    beach = np.clip(lay.beach - inland, 0.0, 1.0)   # a sand strip just inland of the waterline
    sub = planes[:, ry0 - y0:ry1 - y0, rx0 - x0:rx1 - x0]
    for k, ch in enumerate(chans):
        v = mix * (_SOIL[ch] - _VEGETATION[ch])
        v += _VEGETATION[ch]
        v *= tex
        v += beach * (_SAND[ch] - v)
        v -= sub[k]
        v *= alpha
        sub[k] += v


def _render_wakes(lay, planes, x0, y0, x1, y1, chans):
    r, idx = _overlap(lay.wake_rect, x0, y0, x1, y1)
    tan_k = np.float32(math.tan(KELVIN_HALF_ANGLE))
    foam = _FOAM[chans]
    for i in idx:
        rx0, ry0, rx1, ry1 = (int(v) for v in r[i])
        a, b = _local(lay, i, rx0, ry0, rx1, ry1)
        t = -a - np.float32(0.5) * lay.L[i]           # distance behind the stern
        b = np.abs(b)
        wl = lay.wake_len[i]
        fade = np.clip(np.float32(1.0) - t / wl, 0.0, 1.0)
        fade *= fade
        fade *= np.clip(t + np.float32(1.0), 0.0, 1.0)   # starts at the stern
        # Turbulent centre line (about hull-wide, spreading) plus the two Kelvin arms.
        width = np.float32(0.6) * lay.W[i] + np.float32(0.06) * np.maximum(t, 0)
        centre = np.exp(-np.square(b / width))
        arm = np.exp(-np.square((b - t * tan_k) / np.float32(1.2)))
        arm *= lay.arm_gain[i]
        centre += arm
        centre *= fade
        centre *= lay.wake_gain[i]
        sub = planes[:, ry0 - y0:ry1 - y0, rx0 - x0:rx1 - x0]
        for k in range(len(chans)):
            sub[k] += centre * foam[k]


def _render_glints(lay, planes, x0, y0, x1, y1, chans):
    R = GLINT_RADIUS
    sel = np.flatnonzero((lay.gx + R + 1 > x0) & (lay.gx - R - 1 < x1) & (lay.gy + R + 1 > y0) & (lay.gy - R - 1 < y1))
    if not sel.size:
        return
    off = np.arange(-R, R + 1)
    ix = np.floor(lay.gx[sel]).astype(np.int64)[:, None, None] + off[None, None, :]
    iy = np.floor(lay.gy[sel]).astype(np.int64)[:, None, None] + off[None, :, None]
    dx = ix.astype(np.float32) + np.float32(0.5) - lay.gx[sel][:, None, None]
    dy = iy.astype(np.float32) + np.float32(0.5) - lay.gy[sel][:, None, None]
    s = lay.gsigma[sel][:, None, None]
    v = lay.gpeak[sel][:, None, None] * np.exp(-(dx * dx + dy * dy) / (np.float32(2) * s * s))
    iy, ix = np.broadcast_arrays(iy, ix)
    inside = (ix >= x0) & (ix < x1) & (iy >= y0) & (iy < y1)
    yy, xx, vv = iy[inside] - y0, ix[inside] - x0, v[inside]
    gl = np.array([0.95, 0.97, 1.0, 0.6], np.float32)[chans]   # sun glint: white, weaker in NIR
    for k in range(len(chans)):
        np.add.at(planes[k], (yy, xx), vv * gl[k])


def _render_hulls(lay, planes, cloud, x0, y0, x1, y1, chans):
    r, idx = _overlap(lay.hull_rect, x0, y0, x1, y1)
    nd = lay.nodata_rect()
    for i in idx:
        rx0, ry0, rx1, ry1 = (int(v) for v in r[i])
        a, b = _local(lay, i, rx0, ry0, rx1, ry1)
        b = np.abs(b)
        hl, hw, bow = np.float32(0.5) * lay.L[i], np.float32(0.5) * lay.W[i], lay.bow[i]
        # Signed distance (pixels, inside > 0) to the convex hull polygon: stern, sides, the two bow edges.
        d = np.minimum(a + hl, hw - b)
        np.minimum(d, ((hl - a) * hw - b * bow) / np.float32(math.hypot(float(hw), float(bow))), out=d)
        d += np.float32(0.5)
        alpha = np.clip(d, 0.0, 1.0)
        sup = np.minimum(a - lay.sup_a0[i], lay.sup_a1[i] - a)
        np.minimum(sup, np.float32(0.6) * hw - b, out=sup)
        sup += np.float32(0.5)
        np.clip(sup, 0.0, 1.0, out=sup)
        sup *= lay.sup_gain[i] - np.float32(1.0)
        sup += np.float32(1.0)
        sub = planes[:, ry0 - y0:ry1 - y0, rx0 - x0:rx1 - x0]
        for k, ch in enumerate(chans):
            v = sup * lay.color[i, ch]
            v -= sub[k]
            v *= alpha
            sub[k] += v
        # Visibility bookkeeping on pixels whose centre is inside the hull.
        hull = alpha >= np.float32(0.5)
        lay.hull_px[i] += int(hull.sum())
        if cloud is not None:
            lay.cloud_px[i] += int((hull & (cloud[ry0 - y0:ry1 - y0, rx0 - x0:rx1 - x0] >= OPAQUE)).sum())
        if nd is not None:
            ys = np.arange(ry0, ry1)[:, None]
            xs = np.arange(rx0, rx1)[None, :]
            zero = (ys >= nd[1]) & (ys < nd[3]) & (xs >= nd[0]) & (xs < nd[2])
            lay.nodata_px_hit[i] += int((hull & zero).sum())


# --- public API ---------------------------------------------------------------------------------------------------

def _params(params):
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"generate_scene: unknown parameter(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    p = dict(DEFAULTS, **params)
    for name in ("ships", "ship_length", "ship_aspect", "glints", "cloud_cover", "land_depth", "nodata_width"):
        v = p[name]
        if np.ndim(v) == 0:
            v = (v, v)
        if len(v) != 2 or not (0 <= v[0] <= v[1]):
            raise ValueError(f"{name} must be a (low, high) range with 0 <= low <= high, got {p[name]!r}")
        p[name] = (float(v[0]), float(v[1]))
    if p["ship_length"][0] < 4:
        raise ValueError(f"ship_length must be >= 4 px, got {p['ship_length']!r}")
    if p["cloud_cover"][1] > 1:
        raise ValueError(f"cloud_cover must lie in 0..1, got {p['cloud_cover']!r}")
    for name in ("dark_ship_fraction", "wake_probability", "cloud_probability", "land_probability",
                 "nodata_probability"):
        if not 0.0 <= float(p[name]) <= 1.0:
            raise ValueError(f"{name} must lie in 0..1, got {p[name]!r}")
    return p


def generate_scene(seed, height=256, width=256, *, bands="rgb", out=None, block=DEFAULT_BLOCK, **params) -> Scene:
    """Render the scene of `seed` at height x width.

    bands: "rgb" -> (H, W, 3) uint8; "bgrn" -> (H, W, 4) uint16 with 12-bit values (0..4095).
    out: optional caller array (np.ndarray or np.memmap) of that shape and dtype, filled in place and returned as
    Scene.image (big frames). block: render block edge in pixels; the result does not depend on it.
    params: see DEFAULTS. Deterministic per (seed, height, width, params); both band modes show the same scene.
    """
    if bands not in BANDS:
        raise ValueError(f"bands must be 'rgb' or 'bgrn', got {bands!r}")
    seed, height, width, block = int(seed), int(height), int(width), int(block)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height} x {width}")
    if block < 16:
        raise ValueError(f"block must be >= 16 px, got {block}")
    chans, full, dtype = BANDS[bands]
    shape = (height, width, len(chans))
    if out is None:
        out = np.empty(shape, dtype)
    elif not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != dtype:
        raise ValueError(f"out must be an ndarray of shape {shape} and dtype {np.dtype(dtype).name}, got "
                         f"{getattr(out, 'shape', type(out).__name__)} {getattr(out, 'dtype', '')}")
    lay = _Layout(seed, height, width, _params(params))
    nd = lay.nodata_rect()
    for y0 in range(0, height, block):
        for x0 in range(0, width, block):
            y1, x1 = min(height, y0 + block), min(width, x0 + block)
            planes = _render_block(lay, x0, y0, x1, y1, chans)
            planes *= np.float32(full)
            planes += np.float32(0.5)            # round half up on the truncating cast below
            np.clip(planes, 0.0, full, out=planes)
            if nd is not None:
                a0, a1 = max(nd[1], y0) - y0, min(nd[3], y1) - y0
                b0, b1 = max(nd[0], x0) - x0, min(nd[2], x1) - x0
                if a1 > a0 and b1 > b0:
                    planes[:, a0:a1, b0:b1] = 0
            out[y0:y1, x0:x1] = planes.transpose(1, 2, 0)
    return _labels(lay, out, bands)


def _labels(lay, image, bands):
    box = lay.box
    clipped = np.stack([np.clip(box[:, 0], 0, lay.w), np.clip(box[:, 1], 0, lay.h),
                        np.clip(box[:, 2], 0, lay.w), np.clip(box[:, 3], 0, lay.h)], 1)
    cw, ch = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    full = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    in_frame = (cw * ch >= MIN_KEPT_BOX * full) & (cw >= MIN_BOX_SIDE) & (ch >= MIN_BOX_SIDE) & (lay.hull_px > 0)
    px = np.maximum(lay.hull_px, 1)
    cloud_ok = (px - lay.cloud_px) >= MIN_VISIBLE * px
    nodata_ok = (px - lay.nodata_px_hit) >= MIN_VISIBLE * px
    keep = in_frame & cloud_ok & nodata_ok
    return Scene(image=image, boxes=clipped[keep].astype(np.float32).reshape(-1, 4),
                 classes=np.zeros(int(keep.sum()), np.int64), seed=lay.seed, bands=bands,
                 ships_total=lay.n_ships, hidden_by_cloud=int((in_frame & ~cloud_ok).sum()),
                 hidden_by_nodata=int((in_frame & cloud_ok & ~nodata_ok).sum()),
                 cut_by_edge=int((~in_frame).sum()), glints=lay.n_glints, cloud_cover=lay.cloud_cover,
                 land_edge=lay.land_edge, nodata_edge=lay.nodata_edge)


def scene_batch(seeds, size=256, bands="rgb", **params):
    """Scenes for training/evaluation: (images (N, size, size, C), [boxes (n_i, 4) float32], [classes (n_i,)])."""
    seeds = [int(s) for s in seeds]
    chans, _, dtype = BANDS[bands] if bands in BANDS else (None, None, None)
    if chans is None:
        raise ValueError(f"bands must be 'rgb' or 'bgrn', got {bands!r}")
    images = np.empty((len(seeds), size, size, len(chans)), dtype)
    boxes, classes = [], []
    for i, s in enumerate(seeds):
        sc = generate_scene(s, size, size, bands=bands, out=images[i], **params)
        boxes.append(sc.boxes)
        classes.append(sc.classes)
    return images, boxes, classes
