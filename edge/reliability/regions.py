"""The protected regions of a running flight loop, with their golden sources, and the region map.

    weights  Backend.weight_regions() in memory="owned" mode: the memory the runtime computes from.
             LiteRT: one region, the model file's bytes (the interpreter reads the flatbuffer in
             place), so region offsets are file offsets. ONNX Runtime: one region per initializer
             array; its golden bytes are the same initializer parsed again from the verified file
             (edge.backends.ort._initializers, the very function that built the live arrays).
             Golden file: the manifest path read through FileEntry.read_bytes() (size + sha256);
             when that fails, the second copy data_dir/golden/<sha256>.<ext> (written, verified, at
             first start); both failing -> GoldenError (the scrubber reports unrecoverable). The
             parsed golden is cached while a scrub step restores and dropped after it (release()).
             In memory="copy" mode the runtime computes from its own copy: there are no weight
             regions, FlightRegions.weights_protected is False and a warning says so.
    lut      every LUT in FramePipeline._luts (the one for the configured sensor mode is built
             first); golden: the same LUT built again by the pipeline's own lut_for (deterministic).
    config   the validated Config as canonical JSON (sorted keys, no spaces) in a bytearray the loop
             holds as loop.config_image; golden: the same JSON serialized again from loop.cfg.

    vlm      the on-board VLM's weights (edge/vlm, [vlm] memory = "owned"), added to the running
             scrubber when the service loads the model (protect_vlm) and taken out when it drops it
             (unprotect_vlm): one region "vlm/<role>:<initializer>" (kind "vlm_weights") per array
             of VlmModel.weight_regions(). Golden: the same initializer parsed again from the graph
             file (external data: the byte range it names), the file verified by the sha256 taken
             when the model was loaded (vlm_digests): a VLM directory has no manifest. No second
             golden copy: the VLM is optional, so a block that cannot be restored disables the
             model instead of the board (edge/vlm/service.py drops it and loads it again, the files
             checked against the same digests, at the next question; the flight loop does not enter
             safe mode for a "vlm/" region). In memory="copy" mode nothing is added and the VLM's
             weights are listed in FlightRegions.unprotected.

write_region_map(path, regions) writes state/regions.json, the map the fault injector reads:
{"pid", "time_ms", "regions": [{"name", "kind", "address", "length", "block_bytes"}], ...}; it is
written again whenever regions are added or removed (the VLM's), so the map is always the live set.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from edge.manifest import FileEntry, ModelIntegrityError
from edge.reliability.scrubber import (BLOCK_BYTES, DEFAULT_BUDGET_BYTES_PER_S, GoldenError,
                                       ProtectedRegion, Scrubber)

log = logging.getLogger("edge.scrub")

#: Directory (under data_dir) of the second golden copy of each model file.
GOLDEN_DIR = "golden"
#: File name (under data_dir/state) of the region map.
REGION_MAP = "regions.json"
MAP_SCHEMA = 1


class FlightRegions(list):
    """The regions of a flight loop (a list of ProtectedRegion) plus what is NOT protected."""

    def __init__(self, regions=(), *, weights_protected: bool = True, unprotected=()):
        super().__init__(regions)
        self.weights_protected = weights_protected
        self.unprotected = list(unprotected)   # human-readable reasons


# ---- model golden ------------------------------------------------------------------------------

def golden_copy_path(data_dir, file: FileEntry) -> Path:
    """data_dir/golden/<sha256>.<ext>: the second golden copy of a model file."""
    return Path(data_dir) / GOLDEN_DIR / f"{file.sha256}{file.path.suffix}"


def _verified(file: FileEntry, path: Path) -> bytes:
    """The bytes at `path`, checked against the manifest entry's size and sha256."""
    return dataclasses.replace(file, path=path).read_bytes()


def ensure_golden_copy(file: FileEntry, data_dir) -> Path:
    """Make sure a verified copy of the model file exists under data_dir/golden (written at first
    start, or again when the copy there fails its check); returns its path. Atomic: a power cut
    leaves either no copy or a complete one."""
    path = golden_copy_path(data_dir, file)
    if path.exists():
        try:
            _verified(file, path)
            return path
        except ModelIntegrityError as e:
            log.warning("golden copy %s fails its check, writing it again: %s", path, e)
    blob = file.read_bytes()  # verified against the manifest
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(blob)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


class ModelGolden:
    """The verified bytes of one model file: the manifest's path, else the second copy. Both are
    read through the manifest entry's size + sha256 check. Caches until release()."""

    def __init__(self, file: FileEntry, copy_path=None):
        self.file = file
        self.copy_path = None if copy_path is None else Path(copy_path)
        self.last_source: str | None = None   # "primary" or "copy": where the last read came from
        self.reads = {"primary": 0, "copy": 0}
        self._blob: bytes | None = None
        self._initializers: dict | None = None

    def blob(self) -> bytes:
        if self._blob is None:
            problems = []
            try:
                self._blob, self.last_source = self.file.read_bytes(), "primary"
            except ModelIntegrityError as e:
                problems.append(str(e))
                if self.copy_path is not None:
                    try:
                        self._blob, self.last_source = _verified(self.file, self.copy_path), "copy"
                        log.warning("golden: model file fails its check, using the second copy "
                                    "%s: %s", self.copy_path, e)
                    except ModelIntegrityError as e2:
                        problems.append(str(e2))
                else:
                    problems.append("no second golden copy")
            if self._blob is None:
                raise GoldenError("; ".join(problems))
            self.reads[self.last_source] += 1
        return self._blob

    def file_bytes(self, offset: int, length: int) -> memoryview:
        blob = self.blob()
        if not 0 <= offset <= len(blob) - length:
            raise GoldenError(f"{length} bytes at {offset} lie outside the {len(blob)}-byte file")
        return memoryview(blob)[offset:offset + length]

    def initializer_bytes(self, name: str, offset: int, length: int) -> bytes:
        if self._initializers is None:
            from edge.backends.ort import _initializers  # the function that built the live arrays
            label = f"{self.file.model}/{self.file.variant} golden"
            try:
                self._initializers = _initializers(self.blob(), label)
            except ValueError as e:
                raise GoldenError(str(e)) from e
        arr = self._initializers.get(name)
        if arr is None:
            raise GoldenError(f"initializer {name!r} not in the golden model")
        raw = arr.reshape(-1).view(np.uint8)
        if not 0 <= offset <= raw.size - length:
            raise GoldenError(f"initializer {name!r}: {length} bytes at {offset} outside {raw.size}")
        return raw[offset:offset + length].tobytes()

    def release(self) -> None:
        """Drop the cached file and parse (called after a scrub step that restored)."""
        self._blob = self._initializers = None


class _FileSlice:
    """golden(offset, length) of a region that IS the model file (LiteRT)."""

    def __init__(self, model: ModelGolden):
        self.model = model

    def __call__(self, offset: int, length: int):
        return self.model.file_bytes(offset, length)

    def release(self) -> None:
        self.model.release()


class _InitializerSlice:
    """golden(offset, length) of one ONNX initializer array (ONNX Runtime owned)."""

    def __init__(self, model: ModelGolden, name: str):
        self.model, self.name = model, name

    def __call__(self, offset: int, length: int):
        return self.model.initializer_bytes(self.name, offset, length)

    @property
    def release(self):  # the shared model's release: one cache for all initializers
        return self.model.release


def weight_regions(backend, data_dir=None, *, block_bytes: int = BLOCK_BYTES,
                   golden: ModelGolden | None = None) -> list:
    """ProtectedRegions of the memory `backend` computes from (empty in "copy" mode). data_dir:
    where the second golden copy lives (None: no second copy)."""
    views = backend.weight_regions()
    if not views:
        return []
    file = backend.file
    if golden is None:
        copy_path = None
        if data_dir is not None:
            try:
                copy_path = ensure_golden_copy(file, data_dir)
            except (OSError, ModelIntegrityError) as e:
                log.warning("no second golden copy of %s: %s", file.path, e)
        golden = ModelGolden(file, copy_path)
    if file.runtime == "litert":
        (name, view), = views.items()
        if view.size != file.size:
            raise ValueError(f"{name}: weight region is {view.size} bytes, the model file {file.size}")
        return [ProtectedRegion(f"weights/{name}", view, _FileSlice(golden), block_bytes=block_bytes,
                                kind="weights")]
    return [ProtectedRegion(f"weights/{name}", view, _InitializerSlice(golden, name),
                            block_bytes=block_bytes, kind="weights")
            for name, view in views.items()]


# ---- LUTs -----------------------------------------------------------------------------------------

class _LutGolden:
    """golden(offset, length) of a pipeline LUT: the same LUT built again (deterministic)."""

    def __init__(self, pipeline, key):
        self.pipeline, self.key = pipeline, key
        self._raw = None

    def __call__(self, offset: int, length: int) -> bytes:
        if self._raw is None:
            fresh = copy.copy(self.pipeline)  # the pipeline's own lut_for, on an empty cache
            fresh._luts = {}
            dtype, depth, bands = self.key
            self._raw = np.ascontiguousarray(fresh.lut_for(dtype, depth, bands)).reshape(-1).view(np.uint8)
        return self._raw[offset:offset + length].tobytes()

    def release(self) -> None:
        self._raw = None


def _lut_name(key) -> str:
    dtype, depth, bands = key
    return f"lut/{np.dtype(dtype).name}/{depth}bit/bands={','.join(map(str, bands))}"


def lut_regions(pipeline, *, block_bytes: int = BLOCK_BYTES, prebuild: bool = True) -> list:
    """ProtectedRegions of the pipeline's LUTs. prebuild: first build the LUT a frame without
    sidecar overrides uses (the configured bit depth and bands), so it is protected from the start.
    LUTs built later (other sensor modes) need lut_regions again."""
    if prebuild:
        raw = np.uint8 if (pipeline.bit_depth or 16) <= 8 else np.uint16
        pipeline.lut_for(raw, None, pipeline.bands)
    regions = []
    for key, lut in pipeline._luts.items():
        if not (lut.flags.c_contiguous and lut.flags.writeable):
            log.warning("LUT %s is not a writable contiguous array: not protected", _lut_name(key))
            continue
        regions.append(ProtectedRegion(_lut_name(key), lut.reshape(-1).view(np.uint8),
                                       _LutGolden(pipeline, key), block_bytes=block_bytes, kind="lut"))
    return regions


# ---- config ------------------------------------------------------------------------------------------

def config_bytes(cfg) -> bytes:
    """The validated config as canonical JSON (sorted keys, compact separators, ASCII)."""
    return json.dumps(cfg.as_dict(), sort_keys=True, separators=(",", ":"), default=str).encode()


def config_region(holder, cfg=None, *, block_bytes: int = BLOCK_BYTES) -> ProtectedRegion:
    """The config image region: holder.config_image (a bytearray, created from cfg when absent);
    golden: config_bytes(holder.cfg) serialized again."""
    cfg = holder.cfg if cfg is None else cfg
    image = getattr(holder, "config_image", None)
    if image is None:
        image = bytearray(config_bytes(cfg))
        holder.config_image = image

    def golden(offset: int, length: int) -> bytes:
        data = config_bytes(getattr(holder, "cfg", None) or cfg)  # the validated Config, again
        if len(data) != len(image):
            raise GoldenError(f"the config serializes to {len(data)} bytes, the image has {len(image)}")
        return data[offset:offset + length]

    return ProtectedRegion("config", np.frombuffer(image, np.uint8), golden,
                           block_bytes=block_bytes, kind="config")


# ---- a flight loop ----------------------------------------------------------------------------------

def flight_regions(loop, *, block_bytes: int = BLOCK_BYTES) -> FlightRegions:
    """Every protected region of a running FlightLoop: weights (owned mode), LUTs, config."""
    weights = weight_regions(loop.backend, loop.data_dir, block_bytes=block_bytes)
    unprotected = []
    if not weights:
        why = (f"weights unprotected: memory={loop.backend.memory!r}, the runtime computes from its "
               f"own copy (run with model.memory = \"owned\" to scrub them)")
        unprotected.append(why)
        log.warning("scrubber: %s", why)
    regions = weights + lut_regions(loop.pipeline, block_bytes=block_bytes)
    regions.append(config_region(loop, block_bytes=block_bytes))
    return FlightRegions(regions, weights_protected=bool(weights), unprotected=unprotected)


# ---- the on-board VLM's weights ----------------------------------------------------------------------

#: Name prefix and kind of the VLM's regions (the flight loop routes their unrecoverable events to
#: the VLM service instead of entering safe mode).
VLM_PREFIX = "vlm/"
VLM_KIND = "vlm_weights"
_HASH_CHUNK = 1 << 20


def is_vlm_region(name: str) -> bool:
    """Whether a region name (or a scrub event text, which starts with it) is the VLM's."""
    return str(name).startswith(VLM_PREFIX)


def _hash_file(path: Path, want: tuple | None = None):
    """(sha256 hex of the file, the bytes of the range want=(offset, length) or None), streamed in
    1 MiB chunks: memory stays flat whatever the file's size."""
    h, parts = hashlib.sha256(), []
    pos = 0
    lo, hi = (want[0], want[0] + want[1]) if want is not None else (0, 0)
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_HASH_CHUNK)
            if not chunk:
                break
            h.update(chunk)
            end = pos + len(chunk)
            if want is not None and end > lo and pos < hi:
                parts.append(chunk[max(lo - pos, 0):min(hi, end) - pos])
            pos = end
    return h.hexdigest(), (b"".join(parts) if want is not None else None)


def vlm_files(model) -> list:
    """Every file the VLM's sessions were built from: each role's graph and its external data."""
    out = []
    for role in sorted(model.files):
        gf = model.files[role]
        out.append(Path(gf.path))
        out.extend(Path(e) for e in gf.external)
    return out


def vlm_digests(model, beat=None) -> dict:
    """{str(path): sha256 hex} of vlm_files(model): taken right after the model is loaded, the
    reference for every golden read and every reload in this run. beat(): called between files (a
    multi-GB export hashes for seconds)."""
    out = {}
    for path in vlm_files(model):
        if beat is not None:
            beat()
        try:
            out[str(path)] = _hash_file(path)[0]
        except OSError as e:
            raise GoldenError(f"{path}: unreadable ({e.strerror or e})") from e
    return out


def check_vlm_digests(model, digests: dict, beat=None) -> None:
    """GoldenError naming the file when a file of `model` is not byte for byte the one hashed at
    the first load (a reload after a drop must not bring damaged weights in)."""
    now = vlm_digests(model, beat)
    for path, digest in now.items():
        if digests.get(path) != digest:
            was = digests.get(path)
            raise GoldenError(f"{Path(path).name}: sha256 {digest[:16]}... differs from the first load's "
                              f"{(was or 'none')[:16]}... (damaged or replaced)")


class VlmGolden:
    """The verified initializers of one VLM graph file: golden for its regions.

    Errors name the file by its name (a scrub event has 150 characters; the directory is in the
    VLM's load event). The graph (.onnx) is read whole, its sha256 checked against the load's, and
    parsed with the `onnx` package from those very bytes; an initializer stored in the graph
    converts exactly as edge.vlm.model._owned_initializers converted it (numpy_helper.to_array, C
    order). One with external data is the byte range its location / offset / length name in the
    external file, which is hashed (streamed) while the range is read. The parse and the arrays
    taken from it are cached until release() (after the scrub step that restored): no resident copy
    of the weights. Holding the parse costs about the graph file's size during that step."""

    def __init__(self, graph_file, digests: dict):
        self.path = Path(graph_file.path)
        self.digests = dict(digests)
        self._tensors: dict | None = None   # name -> TensorProto of the verified parse
        self._raw: dict = {}                # name -> uint8 bytes of the converted initializer
        self._checked: set = set()          # external files verified in this step
        self.reads = 0                      # verified reads of the graph file (tests, telemetry)

    def _verified_blob(self, path: Path) -> bytes:
        want = self.digests.get(str(path))
        if want is None:
            raise GoldenError(f"{path.name}: not hashed when the model was loaded (no reference sha256)")
        try:
            blob = path.read_bytes()
        except OSError as e:
            raise GoldenError(f"{path.name}: unreadable ({e.strerror or e})") from e
        got = hashlib.sha256(blob).hexdigest()
        if got != want:
            raise GoldenError(f"{path.name}: sha256 {got[:16]}... differs from the load's {want[:16]}...")
        return blob

    def _parse(self) -> dict:
        if self._tensors is None:
            blob = self._verified_blob(self.path)
            self.reads += 1
            try:
                import onnx

                model = onnx.load_model_from_string(blob)
            except Exception as e:  # protobuf DecodeError: cannot be after the sha256 check, but say so
                raise GoldenError(f"{self.path.name}: not a readable ONNX model ({str(e)[:120]})") from e
            del blob
            self._tensors = {t.name: t for t in model.graph.initializer}
        return self._tensors

    def _external(self, tensor) -> bytes:
        from onnx.external_data_helper import ExternalDataInfo

        info = ExternalDataInfo(tensor)
        path = self.path.parent / info.location
        offset = int(info.offset or 0)
        length = info.length
        try:
            if length is None:
                length = path.stat().st_size - offset
            if str(path) in self._checked:   # hashed whole earlier in this step
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read(int(length))
            else:
                want = self.digests.get(str(path))
                if want is None:
                    raise GoldenError(f"{path.name}: external data of {tensor.name!r} was not hashed when "
                                      f"the model was loaded (no reference sha256)")
                digest, data = _hash_file(path, (offset, int(length)))
                if digest != want:
                    raise GoldenError(f"{path.name}: sha256 {digest[:16]}... differs from the load's "
                                      f"{want[:16]}...")
                self._checked.add(str(path))
        except OSError as e:
            raise GoldenError(f"{path.name}: unreadable ({e.strerror or e})") from e
        if len(data) != int(length):
            raise GoldenError(f"{path.name}: {tensor.name!r} needs {length} bytes at {offset}, the file "
                              f"has {len(data)} there")
        return data

    def _initializer(self, name: str) -> np.ndarray:
        raw = self._raw.get(name)
        if raw is None:
            from onnx import TensorProto, numpy_helper

            tensor = self._parse().get(name)
            if tensor is None:
                raise GoldenError(f"{self.path.name}: initializer {name!r} not in the golden graph")
            if tensor.data_location == TensorProto.EXTERNAL:
                copy_t = TensorProto()
                copy_t.CopyFrom(tensor)
                copy_t.raw_data = self._external(tensor)
                del copy_t.external_data[:]
                copy_t.data_location = TensorProto.DEFAULT
                tensor = copy_t
            try:
                arr = np.array(numpy_helper.to_array(tensor), copy=True, order="C")
            except Exception as e:
                raise GoldenError(f"{self.path.name}: initializer {name!r} does not convert ({e})") from e
            raw = arr.reshape(-1).view(np.uint8)
            self._raw[name] = raw
        return raw

    def initializer_bytes(self, name: str, offset: int, length: int) -> bytes:
        raw = self._initializer(name)
        if not 0 <= offset <= raw.size - length:
            raise GoldenError(f"initializer {name!r}: {length} bytes at {offset} outside {raw.size}")
        return raw[offset:offset + length].tobytes()

    def release(self) -> None:
        self._tensors = None
        self._raw = {}
        self._checked = set()


class _VlmInitializerSlice:
    """golden(offset, length) of one VLM initializer array."""

    def __init__(self, golden: VlmGolden, name: str):
        self.golden, self.name = golden, name

    def __call__(self, offset: int, length: int):
        return self.golden.initializer_bytes(self.name, offset, length)

    @property
    def release(self):  # one cache per graph file for all its initializers
        return self.golden.release


def vlm_weight_regions(model, digests: dict, *, block_bytes: int = BLOCK_BYTES, beat=None) -> list:
    """ProtectedRegions of the arrays a VlmModel(memory="owned") computes from (empty in "copy"
    mode), named "vlm/<role>:<initializer>", kind VLM_KIND; digests: vlm_digests(model) (the
    load's). Registering encodes every word (SECDED) and block (CRC32C): beat() between regions."""
    views = model.weight_regions() if hasattr(model, "weight_regions") else {}
    goldens = {role: VlmGolden(gf, digests) for role, gf in model.files.items()} if views else {}
    regions = []
    for i, (key, view) in enumerate(views.items()):
        role, _, name = key.partition(":")
        if role not in goldens:
            raise ValueError(f"vlm weight region {key!r}: role {role!r} is not one of the model's "
                             f"graphs {sorted(goldens)}")
        if beat is not None and i % 64 == 0:
            beat()
        regions.append(ProtectedRegion(f"{VLM_PREFIX}{key}", view,
                                       _VlmInitializerSlice(goldens[role], name),
                                       block_bytes=block_bytes, kind=VLM_KIND))
    return regions


def _rewrite_map(loop) -> None:
    try:
        write_region_map(loop.state_dir / REGION_MAP, loop.regions)
    except OSError as e:   # the map is for the injector and the sim: never worth stopping the VLM
        log.warning("region map not rewritten: %s", e)


def protect_vlm(loop, model, digests: dict, *, beat=None) -> list:
    """Add the VLM's weight regions to the loop's running scrubber and region list and rewrite
    state/regions.json. Returns the regions (empty in "copy" mode: the reason is added to
    loop.regions.unprotected and the map once)."""
    regions = vlm_weight_regions(model, digests, block_bytes=loop.cfg.scrub["block_bytes"], beat=beat)
    if not regions:
        why = (f"vlm weights unprotected: memory={getattr(model, 'memory', 'copy')!r}, ONNX Runtime "
               f"computes from its own copy (set vlm.memory = \"owned\" to scrub them)")
        if why not in loop.regions.unprotected:
            loop.regions.unprotected.append(why)
            log.warning("scrubber: %s", why)
            _rewrite_map(loop)
        return []
    added = []
    try:
        for r in regions:
            loop.scrubber.add_region(r)
            added.append(r)
    except ValueError:   # a name already registered: a model not unprotected before; undo
        for r in added:
            loop.scrubber.remove_region(r.name)
        raise
    loop.regions.extend(regions)
    _rewrite_map(loop)
    return regions


def unprotect_vlm(loop, regions) -> None:
    """Take the VLM's regions out of the scrubber and the region list (the model is dropped: its
    arrays are about to be freed) and rewrite state/regions.json."""
    names = {r.name for r in regions}
    for name in names:
        try:
            loop.scrubber.remove_region(name)
        except KeyError:
            pass
    loop.regions[:] = [r for r in loop.regions if r.name not in names]
    _rewrite_map(loop)


def write_region_map(path, regions, *, pid: int | None = None) -> dict:
    """Write the region map (JSON, atomically) the injector uses; returns the document."""
    doc = {"schema": MAP_SCHEMA, "pid": os.getpid() if pid is None else int(pid),
           "time_ms": int(time.time() * 1000),
           "regions": [{"name": r.name, "kind": r.kind, "address": r.address, "length": r.length,
                        "block_bytes": r.block_bytes} for r in regions]}
    if isinstance(regions, FlightRegions):
        doc["weights_protected"] = regions.weights_protected
        doc["unprotected"] = regions.unprotected
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)
    return doc


def protect_flight_loop(loop, *, budget_bytes_per_s: float = DEFAULT_BUDGET_BYTES_PER_S,
                        on_event=None, block_bytes: int = BLOCK_BYTES, start: bool = True):
    """Register the loop's regions, write state/regions.json, and (start=True) start the paced
    scrub thread. Returns (Scrubber, FlightRegions)."""
    regions = flight_regions(loop, block_bytes=block_bytes)
    scrubber = Scrubber(regions, budget_bytes_per_s=budget_bytes_per_s, on_event=on_event)
    write_region_map(loop.state_dir / REGION_MAP, regions)
    if start:
        scrubber.start()
    return scrubber, regions


__all__ = ["FlightRegions", "GOLDEN_DIR", "ModelGolden", "REGION_MAP", "VLM_KIND", "VLM_PREFIX",
           "VlmGolden", "check_vlm_digests", "config_bytes", "config_region", "ensure_golden_copy",
           "flight_regions", "golden_copy_path", "is_vlm_region", "lut_regions",
           "protect_flight_loop", "protect_vlm", "unprotect_vlm", "vlm_digests", "vlm_files",
           "vlm_weight_regions", "weight_regions", "write_region_map"]
