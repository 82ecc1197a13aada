"""Frame sources: sensor dumps, .npy, PNG/TIFF, and a spool directory, as memory-mapped frames.

A Frame is a numpy view (np.memmap for .raw and .npy: nothing is read until a tile batch touches it, so
memory does not scale with frame size) plus what the downlink record needs (capture time, georeference).

Formats
    .raw / .bin   a sensor dump; its shape and metadata come from a JSON sidecar <stem>.json:
                  {"shape": [H, W, C], "dtype": "uint16", "layout": "HWC" | "CHW",
                   "capture_time": ms since the epoch (int) or ISO-8601 UTC text,
                   "georef": {"geotransform": [6 numbers]} | {"corners": [[lat, lon] x 4]},   (optional)
                   "bit_depth": 12}                                                              (optional)
                  The file must hold exactly H*W*C*itemsize bytes: a truncated or oversized dump is
                  refused (FrameError), never silently reshaped.
    .npy          numpy's own header gives shape and dtype (memory-mapped); sidecar optional.
    .png .tif .tiff  decoded by Pillow (8-bit L/RGB/RGBA, 16-bit grey); sidecar optional.

Spool (a directory): frames are processed in file-name order. Whoever fills the spool writes
`name.part` and renames it when complete (a rename is atomic), so a half-written file is never taken.
Claiming a frame gives it a durable frame id (data_dir/state/frame_id) and renames it into
<spool>/.active/<id>.<name>; when its records are journaled it is renamed into .done/ (or .failed/
for bad input). After a restart the .active/ frames are taken again first, with the same frame id,
so a frame in flight is redone, never lost. Sidecars stay beside the data until the frame is done.
Questions for the on-board VLM arrive in the same directory as `name.questions.json` queue files
(edge/vlm/service.py reads them; written as `.part` and renamed, like frames). They are never frames:
`waiting()` skips them and `question_files()` lists them (a `.questions.json` that is the sidecar of
a frame `name.questions.raw` stays a sidecar); `finish_questions()` moves one to .done/ or .failed/.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.durable import atomic_write, fsync_dir

RAW_SUFFIXES = (".raw", ".bin")
NPY_SUFFIXES = (".npy",)
IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
FRAME_SUFFIXES = RAW_SUFFIXES + NPY_SUFFIXES + IMAGE_SUFFIXES
SIDECAR_SUFFIX = ".json"
PART_SUFFIX = ".part"
#: A VLM question queue file in a spool (edge/vlm/service.py): never a frame, never a sidecar.
QUESTIONS_SUFFIX = ".questions.json"
RAW_DTYPES = ("uint8", "uint16")
#: A sidecar is a few hundred bytes; anything much larger is not one.
MAX_SIDECAR_BYTES = 64 * 1024
ACTIVE, DONE, FAILED = ".active", ".done", ".failed"
_ACTIVE_NAME = re.compile(r"^(\d{10})\.(.+)$")


class FrameError(ValueError):
    """A frame file that cannot be used (truncated, mismatched sidecar, unreadable); names the file."""


@dataclass
class Frame:
    """One input frame: `array` is (H, W, C) for layout "HWC" or (C, H, W) for "CHW"."""

    array: np.ndarray
    layout: str
    name: str
    capture_time_ms: int
    georef: dict | None = None
    meta: dict = field(default_factory=dict)
    frame_id: int | None = None
    path: Path | None = None

    @property
    def height(self) -> int:
        return int(self.array.shape[0] if self.layout == "HWC" or self.array.ndim == 2
                   else self.array.shape[1])

    @property
    def width(self) -> int:
        return int(self.array.shape[1] if self.layout == "HWC" or self.array.ndim == 2
                   else self.array.shape[2])

    @property
    def bands(self) -> int:
        if self.array.ndim == 2:
            return 1
        return int(self.array.shape[2] if self.layout == "HWC" else self.array.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)


# ---- sidecars and metadata ---------------------------------------------------------------------

def sidecar_path(path: Path) -> Path:
    return path.with_suffix(SIDECAR_SUFFIX)


def _time_ms(value, where: str) -> int:
    if isinstance(value, bool):
        raise FrameError(f"{where}: capture_time must be ms since the epoch or ISO-8601 text, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise FrameError(f"{where}: capture_time must be >= 0, got {value}")
        return value
    if isinstance(value, str):
        try:
            t = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise FrameError(f"{where}: capture_time {value!r} is not ISO-8601") from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=_dt.timezone.utc)
        return int(round(t.timestamp() * 1000))
    raise FrameError(f"{where}: capture_time must be ms since the epoch or ISO-8601 text, got {value!r}")


def _georef(value, where: str) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) != 1 or not set(value) <= {"geotransform", "corners"}:
        raise FrameError(f"{where}: georef must be {{'geotransform': [6 numbers]}} or "
                         f"{{'corners': [[lat, lon] x 4]}}, got {value!r}")
    if "geotransform" in value:
        gt = value["geotransform"]
        if (not isinstance(gt, list) or len(gt) != 6
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                           for v in gt)):
            raise FrameError(f"{where}: georef.geotransform must be 6 finite numbers, got {gt!r}")
        return {"geotransform": [float(v) for v in gt]}
    corners = value["corners"]
    ok = (isinstance(corners, list) and len(corners) == 4
          and all(isinstance(c, list) and len(c) == 2
                  and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                          for v in c) for c in corners))
    if not ok:
        raise FrameError(f"{where}: georef.corners must be 4 [lat, lon] pairs, got {corners!r}")
    if not all(-90 <= c[0] <= 90 and -180 <= c[1] <= 180 for c in corners):
        raise FrameError(f"{where}: georef.corners out of range (lat -90..90, lon -180..180)")
    return {"corners": [[float(c[0]), float(c[1])] for c in corners]}


def read_sidecar(path: Path, required: bool) -> dict:
    """The JSON sidecar of a frame file ({} when absent and not required)."""
    side = sidecar_path(path)
    if not side.exists():
        if required:
            raise FrameError(f"{path.name}: sensor dump without its sidecar {side.name} (shape, dtype)")
        return {}
    try:
        if side.stat().st_size > MAX_SIDECAR_BYTES:
            raise FrameError(f"{side.name}: sidecar larger than {MAX_SIDECAR_BYTES} bytes")
        meta = json.loads(side.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FrameError(f"{side.name}: unreadable sidecar: {e}") from e
    if not isinstance(meta, dict):
        raise FrameError(f"{side.name}: sidecar must be a JSON object, got {type(meta).__name__}")
    return meta


def _meta_common(meta: dict, where: str, default_time_ms: int) -> tuple[int, dict | None]:
    t = _time_ms(meta["capture_time"], where) if "capture_time" in meta else default_time_ms
    return t, _georef(meta.get("georef"), where)


def _mtime_ms(path: Path) -> int:
    try:
        return int(path.stat().st_mtime * 1000)
    except OSError:
        return 0


# ---- readers ---------------------------------------------------------------------------------------

def _open_raw(path: Path, meta: dict, layout_default: str) -> tuple[np.ndarray, str]:
    where = sidecar_path(path).name
    shape, dtype = meta.get("shape"), meta.get("dtype")
    if (not isinstance(shape, list) or len(shape) not in (2, 3)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise FrameError(f"{where}: shape must be 2 or 3 positive integers, got {shape!r}")
    if dtype not in RAW_DTYPES:
        raise FrameError(f"{where}: dtype must be one of {list(RAW_DTYPES)}, got {dtype!r}")
    layout = meta.get("layout", layout_default)
    if layout not in ("HWC", "CHW"):
        raise FrameError(f"{where}: layout must be 'HWC' or 'CHW', got {layout!r}")
    itemsize = np.dtype(dtype).itemsize
    expected = math.prod(shape) * itemsize
    size = path.stat().st_size
    if size != expected:
        what = "truncated" if size < expected else "larger than its sidecar says"
        raise FrameError(f"{path.name}: {what}: {size} bytes, sidecar {shape} {dtype} needs {expected}")
    # Sensor dumps are little-endian, as is every host we fly (aarch64, x86-64); the kernels take
    # native byte order only, so a big-endian host gets a clear error from open_frame's dtype check.
    dt = np.dtype(dtype) if sys.byteorder == "little" else np.dtype(dtype).newbyteorder("<")
    return np.memmap(path, dtype=dt, mode="r", shape=tuple(shape)), layout


def _open_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise FrameError(f"{path.name}: not a readable .npy frame: {e}") from e
    if not isinstance(arr, np.ndarray):
        raise FrameError(f"{path.name}: .npy holds no array")
    return arr


def _open_image(path: Path) -> np.ndarray:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as e:  # pragma: no cover - pillow is an optional flight dependency
        raise FrameError(f"{path.name}: PNG/TIFF frames need pillow ({e})") from e
    try:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
                return np.asarray(im).astype(np.uint16, copy=False)
            if im.mode not in ("L", "RGB", "RGBA"):
                im = im.convert("RGB")
            return np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, struct.error, zlib.error) as e:
        raise FrameError(f"{path.name}: not a readable image: {e}") from e


def open_frame(path, *, layout: str = "HWC", kind: str = "auto", frame_id: int | None = None,
               name: str | None = None) -> Frame:
    """Open one frame file (see the module docstring). Raises FrameError naming the problem."""
    path = Path(path)
    suffix = path.suffix.lower()
    if kind == "auto":
        kind = ("npy" if suffix in NPY_SUFFIXES else "image" if suffix in IMAGE_SUFFIXES else "raw")
    try:
        if not path.is_file():
            raise FrameError(f"{path.name}: no such frame file")
        meta = read_sidecar(path, required=kind == "raw")
        if kind == "raw":
            arr, layout = _open_raw(path, meta, layout)
        elif kind == "npy":
            arr = _open_npy(path)
            layout = meta.get("layout", layout)
        elif kind == "image":
            arr = _open_image(path)
            layout = "HWC"
        else:
            raise FrameError(f"{path.name}: unknown frame kind {kind!r}")
        t, georef = _meta_common(meta, sidecar_path(path).name, _mtime_ms(path))
    except OSError as e:
        raise FrameError(f"{path.name}: {e.strerror or e}") from e
    if arr.dtype not in (np.uint8, np.uint16):  # (a byte-swapped uint16 compares unequal too)
        raise FrameError(f"{path.name}: frame dtype must be uint8 or uint16 in native byte order, "
                         f"got {arr.dtype.str}")
    if arr.ndim not in (2, 3) or 0 in arr.shape:
        raise FrameError(f"{path.name}: frame must be 2-D or 3-D and non-empty, got shape {arr.shape}")
    return Frame(arr, layout, name or path.name, t, georef, meta, frame_id, path)


# ---- durable counters ----------------------------------------------------------------------------

class DurableCounter:
    """A uint64 that survives power cuts: 8 bytes + CRC32, written to a temp file, fsynced, renamed.
    A missing or corrupt file restarts from `start` (and says so in .problem)."""

    _FMT = "<QI"

    def __init__(self, path, start: int = 1):
        self.path = Path(path)
        self.problem: str | None = None
        self.value = start
        try:
            blob = self.path.read_bytes()
            value, crc = struct.unpack(self._FMT, blob)
            if zlib.crc32(blob[:8]) != crc:
                raise ValueError("CRC mismatch")
            self.value = value
        except FileNotFoundError:
            pass
        except (OSError, ValueError, struct.error) as e:
            self.problem = f"{self.path.name}: unreadable ({e}); restarting at {start}"

    def take(self) -> int:
        """The current value; the next one is durable before this returns."""
        value = self.value
        self.set(value + 1)
        return value

    def set(self, value: int) -> None:
        self.value = int(value)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = struct.pack("<Q", self.value)
        atomic_write(self.path, payload + struct.pack("<I", zlib.crc32(payload)))


# ---- spool ---------------------------------------------------------------------------------------------

@dataclass
class Claim:
    """A frame taken from the spool: its id and where its file is now."""

    frame_id: int
    name: str          # original file name
    path: Path         # in .active/
    resumed: bool      # taken again after a restart


class Spool:
    """A directory of frames processed in name order, each exactly once (see the module docstring)."""

    def __init__(self, directory, state_dir):
        self.dir = Path(directory)
        if not self.dir.is_dir():
            raise FrameError(f"spool {self.dir}: not a directory")
        for sub in (ACTIVE, DONE, FAILED):
            (self.dir / sub).mkdir(exist_ok=True)
        self.ids = DurableCounter(Path(state_dir) / "frame_id")

    def _active(self) -> list[Path]:
        return sorted(p for p in (self.dir / ACTIVE).iterdir()
                      if _ACTIVE_NAME.match(p.name) and p.suffix.lower() in FRAME_SUFFIXES)

    def _files(self) -> list[Path]:
        """The spool's own files (one directory scan): frames, sidecars, queue files."""
        return [p for p in self.dir.iterdir() if p.is_file() and not p.name.startswith(".")]

    @staticmethod
    def _is_frame(p: Path) -> bool:
        return p.suffix.lower() in FRAME_SUFFIXES and not p.name.lower().endswith(QUESTIONS_SUFFIX)

    def waiting(self) -> list[Path]:
        """Frame files not yet claimed, in processing order."""
        return sorted(p for p in self._files() if self._is_frame(p))

    def question_files(self) -> list[Path]:
        """The VLM question queue files (`*.questions.json`) waiting in the spool, in name order.
        A `.questions.json` beside a frame of the same stem (waiting or active) is that frame's
        sidecar, not a queue file."""
        files = self._files()
        stems = {p.stem for p in files if self._is_frame(p)}
        stems.update(m.group(2).rsplit(".", 1)[0] for p in self._active()
                     if (m := _ACTIVE_NAME.match(p.name)))
        return sorted(p for p in files
                      if p.name.lower().endswith(QUESTIONS_SUFFIX)
                      and p.name[:-len(SIDECAR_SUFFIX)] not in stems)

    def finish_questions(self, path: Path, ok: bool) -> Path:
        """Move a queue file to .done/ (its questions are durably queued) or .failed/ (unusable)."""
        dest_dir = self.dir / (DONE if ok else FAILED)
        dest = dest_dir / Path(path).name
        os.replace(path, dest)
        fsync_dir(dest_dir)
        fsync_dir(self.dir)
        return dest

    def processed(self, name: str) -> bool:
        """Whether a frame of that file name was processed already (it is in .done/ or .failed/) and
        none of that name waits or is being processed again."""
        if (self.dir / name).is_file() or any((m := _ACTIVE_NAME.match(p.name)) and m.group(2) == name
                                              for p in self._active()):
            return False
        return (self.dir / DONE / name).is_file() or (self.dir / FAILED / name).is_file()

    def active_ids(self) -> set[int]:
        """Frame ids of the frames claimed and not yet done (being processed, or left by a crash)."""
        return {int(m.group(1)) for p in self._active() if (m := _ACTIVE_NAME.match(p.name))}

    @property
    def next_frame_id(self) -> int:
        """The frame id the next claimed frame will get (ids below it were handed out)."""
        return self.ids.value

    def __len__(self) -> int:
        return len(self.waiting()) + len(self._active())

    def claim_next(self) -> Claim | None:
        """The next frame: first one left in .active/ by a previous run, else the first waiting file."""
        for p in self._active():
            m = _ACTIVE_NAME.match(p.name)
            return Claim(int(m.group(1)), m.group(2), p, resumed=True)
        for p in self.waiting():
            frame_id = self.ids.take()
            dest = self.dir / ACTIVE / f"{frame_id:010d}.{p.name}"
            try:
                os.rename(p, dest)
            except FileNotFoundError:  # taken away meanwhile: the id is skipped, never reused
                continue
            fsync_dir(self.dir / ACTIVE)
            return Claim(frame_id, p.name, dest, resumed=False)
        return None

    def sidecar_of(self, claim: Claim) -> Path:
        return sidecar_path(self.dir / claim.name)

    def open(self, claim: Claim, *, layout: str = "HWC", kind: str = "auto") -> Frame:
        """Open a claimed frame (its sidecar still waits beside the spool's files)."""
        side = self.sidecar_of(claim)
        link = sidecar_path(claim.path)
        if side.exists() and not link.exists():
            # the reader looks beside the data file: a hard link costs nothing and is atomic
            try:
                os.link(side, link)
            except OSError:
                link.write_bytes(side.read_bytes())
        try:
            return open_frame(claim.path, layout=layout, kind=kind, frame_id=claim.frame_id,
                              name=claim.name)
        except FrameError as e:  # name the file as it was uplinked, not its .active/ alias
            text = str(e).replace(str(claim.path), claim.name).replace(f"{claim.frame_id:010d}.", "")
            raise FrameError(text) from None

    def _finish(self, claim: Claim, sub: str) -> None:
        dest_dir = self.dir / sub
        os.replace(claim.path, dest_dir / claim.name)
        dest_side = sidecar_path(dest_dir / claim.name)
        for side in (sidecar_path(claim.path), self.sidecar_of(claim)):  # the .active/ link, the original
            if side.exists():
                os.replace(side, dest_side)
        fsync_dir(dest_dir)
        fsync_dir(self.dir / ACTIVE)

    def done(self, claim: Claim) -> None:
        self._finish(claim, DONE)

    def failed(self, claim: Claim) -> None:
        self._finish(claim, FAILED)


__all__ = ["QUESTIONS_SUFFIX", "Claim", "DurableCounter", "Frame", "FrameError", "Spool", "atomic_write",
           "open_frame", "read_sidecar"]
