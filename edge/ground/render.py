"""Draw a frame record's boxes as a PNG quicklook (Pillow).

  render_frame(record, out_png, *, frame=None, max_side=2048, bands=None) -> scale
  thumbnail(frame, factor, bands=None) -> (h, w, 3) uint8

The picture is the frame itself when given (a numpy array (H, W, C) / (H, W), uint8 or uint16, or
a path opened with edge.sources.open_frame), else a blank canvas of the record's frame size. Either
is shrunk by an integer factor k = ceil(max(H, W) / max_side) by averaging k x k blocks; the frame
is read a strip of rows at a time, so a 10980 x 10980 memory-mapped frame is never loaded whole (nor
turned into floats whole). Output pixel = frame pixel / k; the returned scale is 1 / k.

Colours: uint16 data (12-bit sensors) are stretched to 8 bits per band between the 2nd and 98th
percentile of the thumbnail (robust to hot pixels and dark water); uint8 data are shown as they
are. Bands: R, G, B = [2, 1, 0] for 4-band frames (B, G, R, NIR order), [0, 1, 2] for 3-band,
grey for 1 band; `bands` picks others (1 or 3 indices).

Boxes: outline in a colour per class id; "label score" (or only the score) inside the box's top
left when the box is big enough on the thumbnail to hold it.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

#: Robust stretch of uint16 data: these percentiles map to 0 and 255.
STRETCH_PERCENTILES = (2.0, 98.0)
#: Float working set of one strip of rows while shrinking (bytes).
STRIP_BYTES = 16 << 20
#: Canvas colour when there is no frame image.
BACKGROUND = (24, 24, 24)
#: Outline colour of class id c: PALETTE[c % len(PALETTE)] (bright: visible on dark scenes and canvas).
PALETTE = ((255, 64, 64), (64, 255, 64), (64, 160, 255), (255, 220, 0), (255, 0, 255),
           (0, 255, 255), (255, 140, 0), (180, 100, 255), (255, 255, 255), (160, 255, 160))
#: Thumbnail pixels per outline pixel (the outline is at least 1 pixel wide).
PIXELS_PER_LINE_WIDTH = 512


def factor_for(height: int, width: int, max_side: int) -> int:
    """The integer shrink factor that brings max(height, width) to at most max_side."""
    if not isinstance(max_side, int) or isinstance(max_side, bool) or max_side < 1:
        raise ValueError(f"max_side: must be a positive integer, got {max_side!r}")
    return max(1, -(-max(height, width) // max_side))


def default_bands(n_bands: int) -> list[int]:
    if n_bands >= 4:
        return [2, 1, 0]
    if n_bands == 3:
        return [0, 1, 2]
    return [0]


def _open(frame):
    """An array stays an array, an edge.sources.Frame stays a Frame; a path becomes a Frame."""
    if isinstance(frame, np.ndarray):
        return frame
    from edge.sources import Frame, open_frame
    return frame if isinstance(frame, Frame) else open_frame(Path(frame))


def _band_reader(frame):
    """(height, width, n_bands, dtype, read(r0, r1, bands) -> (rows, W, len(bands)) array)."""
    frame = _open(frame)
    layout, arr = ("HWC", frame) if isinstance(frame, np.ndarray) else (frame.layout, frame.array)
    if arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"frame: dtype must be uint8 or uint16, got {arr.dtype}")
    if arr.ndim == 2:
        h, w = arr.shape
        return h, w, 1, arr.dtype, lambda r0, r1, bands: arr[r0:r1, :, None]
    if arr.ndim != 3 or 0 in arr.shape:
        raise ValueError(f"frame: must be (H, W, C) or (H, W) and non-empty, got shape {arr.shape}")
    if layout == "CHW":
        c, h, w = arr.shape
        return h, w, c, arr.dtype, lambda r0, r1, bands: np.stack([arr[b, r0:r1] for b in bands], axis=-1)
    h, w, c = arr.shape
    return h, w, c, arr.dtype, lambda r0, r1, bands: arr[r0:r1][:, :, bands]


def _block_sums(a: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Sums of consecutive groups of k along axis 0 or 1 (the last group may be shorter), float32."""
    n = a.shape[axis]
    full = n // k * k
    head = a[:full] if axis == 0 else a[:, :full]
    shape = head.shape[:axis] + (n // k, k) + head.shape[axis + 1:]
    parts = [head.reshape(shape).sum(axis=axis + 1, dtype=np.float32)]
    if full < n:
        tail = a[full:] if axis == 0 else a[:, full:]
        parts.append(tail.sum(axis=axis, keepdims=True, dtype=np.float32))
    return np.concatenate(parts, axis=axis) if len(parts) > 1 else parts[0]


def _shrink(read, h: int, w: int, bands: list[int], k: int) -> np.ndarray:
    """(ceil(h/k), ceil(w/k), len(bands)) float32 block means, read a strip of rows at a time."""
    out_h, out_w = -(-h // k), -(-w // k)
    out = np.empty((out_h, out_w, len(bands)), np.float32)
    col_counts = np.minimum(np.arange(0, w, k) + k, w) - np.arange(0, w, k)
    out_rows_per_strip = max(1, STRIP_BYTES // max(1, k * w * len(bands) * 4))
    for o0 in range(0, out_h, out_rows_per_strip):
        o1 = min(out_h, o0 + out_rows_per_strip)
        r0, r1 = o0 * k, min(h, o1 * k)
        strip = np.asarray(read(r0, r1, bands))  # only this strip of the (memory-mapped) frame is read
        row_counts = np.minimum(np.arange(0, r1 - r0, k) + k, r1 - r0) - np.arange(0, r1 - r0, k)
        sums = _block_sums(_block_sums(strip, k, 0), k, 1)
        out[o0:o1] = sums / (row_counts[:, None, None] * col_counts[None, :, None])
    return out


def _to_uint8(img: np.ndarray, dtype) -> np.ndarray:
    if dtype == np.uint8:
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)
    out = np.empty(img.shape, np.uint8)
    for b in range(img.shape[2]):
        lo, hi = np.percentile(img[:, :, b], STRETCH_PERCENTILES)
        if hi <= lo:
            hi = lo + 1.0
        out[:, :, b] = np.clip(np.rint((img[:, :, b] - lo) * (255.0 / (hi - lo))), 0, 255)
    return out


def thumbnail(frame, factor: int, bands=None) -> np.ndarray:
    """The frame shrunk by `factor` (block means) as (h, w, 3) uint8 RGB."""
    h, w, n_bands, dtype, read = _band_reader(frame)
    bands = default_bands(n_bands) if bands is None else [int(b) for b in bands]
    if len(bands) not in (1, 3) or not all(0 <= b < n_bands for b in bands):
        raise ValueError(f"bands: need 1 or 3 band indices in 0..{n_bands - 1}, got {bands}")
    rgb = _to_uint8(_shrink(read, h, w, bands, factor), dtype)
    return np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb


def frame_shape(frame) -> tuple[int, int]:
    """(height, width) of a frame as render_frame takes it."""
    h, w, *_ = _band_reader(frame)
    return h, w


def _font():
    from PIL import ImageFont
    return ImageFont.load_default()


def _unpack(record):
    """(Record, labels per detection) of a Record or a DecodedRecord."""
    labels = None
    if hasattr(record, "record") and hasattr(record, "labels"):  # a DecodedRecord
        record, labels = record.record, record.labels
    if record.kind != "frame":
        raise ValueError(f"render: seq {record.seq} is a {record.kind} record, not a frame record")
    if labels is None or len(labels) != len(record.scores):
        names = record.labels or ()
        labels = [names[c] if c < len(names) else f"class_{c}" for c in record.class_ids.tolist()]
    return record, list(labels)


def render_frame(record, out_png, *, frame=None, max_side: int = 2048, bands=None) -> float:
    """Draw a frame record's boxes (see the module docstring) into out_png; returns the scale
    (thumbnail pixels per frame pixel, 1 / k). `record` is a Record or a DecodedRecord.
    Raises ValueError when the frame's size is not the record's, FrameError for a bad frame file."""
    from PIL import Image

    record, labels = _unpack(record)
    h, w = record.frame_size
    k = factor_for(h, w, max_side)
    if frame is not None:
        frame = _open(frame)  # once: a path is opened (and its sidecar read) a single time
        fh, fw = frame_shape(frame)
        if (fh, fw) != (h, w):
            raise ValueError(f"frame is {fh} x {fw} pixels (H x W) but frame record seq {record.seq} "
                             f"(frame id {record.frame_id}) is of a {h} x {w} frame")
        image = Image.fromarray(thumbnail(frame, k, bands), "RGB")
    else:
        image = Image.new("RGB", (-(-w // k), -(-h // k)), BACKGROUND)
    draw_boxes(image, record.boxes / k, record.scores, record.class_ids, labels)
    image.save(out_png, format="PNG")
    return 1.0 / k


def draw_boxes(image, boxes: np.ndarray, scores, class_ids, labels) -> None:
    """Outline boxes (thumbnail pixels, x1 y1 x2 y2 pixel edges) on a Pillow RGB image, with a
    "label score" tag inside each box big enough to hold it."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image)
    w, h = image.size
    line = max(1, round(max(w, h) / PIXELS_PER_LINE_WIDTH))
    font = _font()
    for box, score, class_id, label in zip(boxes.tolist(), np.asarray(scores).tolist(),
                                           np.asarray(class_ids).tolist(), labels):
        x0, y0 = math.floor(box[0]), math.floor(box[1])
        x1, y1 = max(x0, math.ceil(box[2]) - 1), max(y0, math.ceil(box[3]) - 1)
        if x0 >= w or y0 >= h or x1 < 0 or y1 < 0:
            continue
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w - 1, x1), min(h - 1, y1)
        colour = PALETTE[class_id % len(PALETTE)]
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=line)
        inner_w, inner_h = x1 - x0 + 1 - 2 * line, y1 - y0 + 1 - 2 * line
        for text in (f"{label} {score:.2f}", f"{score:.2f}"):
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
            tw, th = right - left + 2, bottom - top + 2
            if tw <= inner_w and 2 * th <= inner_h:  # the tag takes at most half the box height
                tx, ty = x0 + line, y0 + line
                draw.rectangle([tx, ty, tx + tw - 1, ty + th - 1], fill=colour)
                draw.text((tx + 1 - left, ty + 1 - top), text, fill=(0, 0, 0), font=font)
                break


__all__ = ["BACKGROUND", "PALETTE", "default_bands", "draw_boxes", "factor_for", "frame_shape",
           "render_frame", "thumbnail"]
