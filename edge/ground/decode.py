"""Decode a downlink stream: bytes in, checked records (with class names) and one report out.

  decode_stream(source, *, manifest=None, progress=None) -> DecodeResult(records, report)
  iter_decode(source, *, manifest=None, progress=None) -> DecodeIterator   (yields DecodedRecord;
                                                                            .report when exhausted)
  StreamDecoder(manifest=None, **depacketizer_options).feed(chunk) / .finish()

`source` is bytes, a path (str / os.PathLike), a binary file object, or an iterable of byte
chunks. Files are read CHUNK_BYTES at a time, and iter_decode holds no record once it is yielded,
so a stream of any length decodes in bounded memory (what it keeps per record is one seq entry).

The chain is edge/ground/packets.py (Depacketizer: CRC, gaps, reassembly) then
edge/ground/records.py (decode_record); this module adds what only the record layer can see:
  - a record that fails to decode is counted with its RecordError message; decoding goes on;
  - duplicate records: the same seq twice (the flight software re-sends unacknowledged records
    after a restart, in new packets, so the packet layer cannot see it): the first is kept, the
    others are counted, and counted again as conflicts when their bytes differ;
  - seq gaps: seq numbers missing between the lowest and the highest seen (records evicted from
    the journal or lost on the link);
  - frame ids: every frame record's frame id; one frame id in frame records of different seq and
    the same model id is a repeat (a frame processed twice: exactly-once delivery depends on seeing
    it). A frame's detector record and the record of a VLM grounding answer about the same frame
    have different model ids: not a repeat.
Class names: the record's own labels, else the classes of the manifest model whose file sha256
starts with the record's model id, else "class_<id>".
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator, NamedTuple

from edge.ground.packets import DepacketizeReport, Depacketizer, ReassembledRecord
from edge.ground.records import Record, RecordError, decode_record

#: Bytes read from a file per feed(): large enough to amortize the calls, small enough to bound memory.
CHUNK_BYTES = 1 << 20
#: Problems listed one by one in the report (the counts go on beyond this).
MAX_LISTED = 1024
_DIGEST_BYTES = 8


class DecodedRecord(NamedTuple):
    """One record of the stream with what the ground resolved about it."""
    record: Record
    labels: tuple          # class name of each detection (() for records other than frames)
    model: str | None      # manifest model name of the record's model id; None if unknown / no frame
    offset: int | None     # stream offset of the record's first packet (None when read from JSONL)


class RecordProblem(NamedTuple):
    offset: int            # stream offset of the record's first packet
    apid: int
    message: str           # the RecordError message


class SeqGap(NamedTuple):
    first_missing: int
    last_missing: int
    missing: int           # last_missing - first_missing + 1


class FrameIdRepeat(NamedTuple):
    frame_id: int
    first_seq: int         # the frame record seen first with this frame id (and model id)
    seq: int               # a later one with the same frame id and model id and another seq


@dataclass
class DecodeReport:
    """What the decoder saw; complete once the stream is finished."""
    stream_bytes: int = 0
    packets: DepacketizeReport = field(default_factory=DepacketizeReport)
    records_ok: int = 0                 # records decoded and emitted (duplicates not included)
    records_by_kind: dict = field(default_factory=dict)
    decode_errors: int = 0              # reassembled records that failed decode_record
    errors: list = field(default_factory=list)              # RecordProblem, the first MAX_LISTED
    duplicate_records: int = 0          # records of a seq already emitted (dropped)
    duplicate_conflicts: int = 0        # ... of which the bytes differ from the first one's
    duplicate_seqs: list = field(default_factory=list)      # their seqs, the first MAX_LISTED
    seq_min: int | None = None
    seq_max: int | None = None
    missing_seqs: int = 0               # seqs in seq_min..seq_max never seen
    seq_gaps: list = field(default_factory=list)            # SeqGap, the first MAX_LISTED
    seq_gap_count: int = 0
    frame_ids: int = 0                  # distinct frame ids of frame records
    frame_id_ranges: list = field(default_factory=list)     # [first, last] runs, the first MAX_LISTED
    frame_id_repeats: list = field(default_factory=list)    # FrameIdRepeat, the first MAX_LISTED
    frame_id_repeat_count: int = 0
    manifest_error: str | None = None   # why class names could not come from the manifest

    @property
    def clean(self) -> bool:
        """Every byte a good packet, every record decoded, no duplicate, no gap, no repeat."""
        return (self.packets.clean and not (self.decode_errors or self.duplicate_records
                                            or self.missing_seqs or self.frame_id_repeat_count))

    def as_dict(self) -> dict:
        """The report as JSON-native values (lists, str keys): what report.json holds."""
        out = asdict(self)
        packets = out["packets"]
        packets["gaps"] = [g._asdict() for g in self.packets.gaps]
        packets["unknown_apids"] = {str(k): v for k, v in self.packets.unknown_apids.items()}
        packets["clean"] = self.packets.clean
        out["errors"] = [p._asdict() for p in self.errors]
        out["seq_gaps"] = [g._asdict() for g in self.seq_gaps]
        out["frame_id_repeats"] = [r._asdict() for r in self.frame_id_repeats]
        out["frame_id_ranges"] = [list(r) for r in self.frame_id_ranges]
        out["clean"] = self.clean
        return out

    def summary(self) -> dict:
        """The headline figures (the CLI's one-line report)."""
        return summary_of(self.as_dict())


def summary_of(report: dict) -> dict:
    """summary() of a report in its as_dict() form (e.g. read back from report.json)."""
    p = report["packets"]
    return {"stream_bytes": report["stream_bytes"], "packets_ok": p["packets_ok"],
            "records": report["records_ok"], "by_kind": report["records_by_kind"],
            "decode_errors": report["decode_errors"], "duplicate_records": report["duplicate_records"],
            "missing_seqs": report["missing_seqs"], "frame_id_repeats": report["frame_id_repeat_count"],
            "crc_failures": p["crc_failures"], "garbage_bytes": p["garbage_bytes"],
            "packet_duplicates": p["duplicates"],
            "packet_gaps": p["gap_count"], "incomplete_records": p["incomplete_records"],
            "clean": report["clean"]}


# ---- class names ---------------------------------------------------------------------------------

class ClassNames:
    """Class names of a frame record's detections (see the module docstring), manifest cached.

    manifest: None (the default manifest, edge.manifest.load_manifest()), a path, an
    edge.manifest.Manifest, or False (no manifest: class_<id> unless the record has labels).
    The manifest is read at the first frame record, not before."""

    def __init__(self, manifest=None):
        self._source = manifest
        self._by_model_id: dict | None = None
        self.error: str | None = None

    def _table(self) -> dict:
        if self._by_model_id is None:
            self._by_model_id = {}
            if self._source is not False:
                from edge.manifest import Manifest, ManifestError, load_manifest
                try:
                    manifest = (self._source if isinstance(self._source, Manifest)
                                else load_manifest(self._source))
                except ManifestError as e:
                    self.error = str(e)
                    return self._by_model_id
                for name, model in manifest.models.items():
                    for entry in model.files.values():
                        # model id = first 4 bytes of the file's sha256 (edge.downlink.record.model_id_of)
                        self._by_model_id.setdefault(entry.sha256[:8], (name, tuple(model.classes)))
        return self._by_model_id

    def model(self, record: Record) -> tuple[str | None, tuple]:
        """(model name, its classes) of a frame record's model id; (None, ()) when unknown."""
        if record.model_id is None:
            return None, ()
        return self._table().get(record.model_id, (None, ()))

    def of(self, record: Record) -> tuple[tuple, str | None]:
        """(label of each detection, model name)."""
        if record.kind != "frame":
            return (), None
        model, classes = self.model(record)
        names = record.labels if record.labels is not None else classes
        labels = tuple(names[c] if c < len(names) else f"class_{c}" for c in record.class_ids.tolist())
        return labels, model


# ---- decoding --------------------------------------------------------------------------------------

class StreamDecoder:
    """Streaming decoder: feed() chunks as they arrive, finish() at the end; .report as it goes."""

    def __init__(self, manifest=None, **depacketizer_options):
        self._depacketizer = Depacketizer(**depacketizer_options)
        self._names = ClassNames(manifest)
        self.report = DecodeReport(packets=self._depacketizer.report)
        self._digest_by_seq: dict[int, bytes] = {}
        self._seq_by_frame_id: dict[tuple[int, str], int] = {}   # (frame id, model id) -> first seq
        self._finished = False

    def feed(self, chunk) -> list[DecodedRecord]:
        """The next bytes of the stream; returns the records they completed (duplicates left out)."""
        self.report.stream_bytes += len(chunk)
        return self._decode(self._depacketizer.feed(chunk))

    def finish(self) -> list[DecodedRecord]:
        """End of the stream: the last records, and the seq / frame id figures of the report."""
        if self._finished:
            return []
        out = self._decode(self._depacketizer.finish())
        self._finished = True
        self._close_report()
        return out

    def _decode(self, reassembled: list[ReassembledRecord]) -> list[DecodedRecord]:
        out = []
        for item in reassembled:
            decoded = self._decode_one(item)
            if decoded is not None:
                out.append(decoded)
        return out

    def _decode_one(self, item: ReassembledRecord) -> DecodedRecord | None:
        report = self.report
        try:
            record = decode_record(item.payload)
        except RecordError as e:
            report.decode_errors += 1
            if len(report.errors) < MAX_LISTED:
                report.errors.append(RecordProblem(item.offset, item.apid, str(e)))
            return None
        digest = hashlib.blake2b(item.payload, digest_size=_DIGEST_BYTES).digest()
        first = self._digest_by_seq.get(record.seq)
        if first is not None:
            report.duplicate_records += 1
            report.duplicate_conflicts += first != digest
            if len(report.duplicate_seqs) < MAX_LISTED:
                report.duplicate_seqs.append(record.seq)
            return None
        self._digest_by_seq[record.seq] = digest
        report.records_ok += 1
        report.records_by_kind[record.kind] = report.records_by_kind.get(record.kind, 0) + 1
        if record.kind == "frame":
            first_seq = self._seq_by_frame_id.setdefault((record.frame_id, record.model_id), record.seq)
            if first_seq != record.seq:
                report.frame_id_repeat_count += 1
                if len(report.frame_id_repeats) < MAX_LISTED:
                    report.frame_id_repeats.append(FrameIdRepeat(record.frame_id, first_seq, record.seq))
        labels, model = self._names.of(record)
        report.manifest_error = self._names.error
        return DecodedRecord(record, labels, model, item.offset)

    def _close_report(self) -> None:
        report = self.report
        seqs = sorted(self._digest_by_seq)
        if seqs:
            report.seq_min, report.seq_max = seqs[0], seqs[-1]
            report.missing_seqs = seqs[-1] - seqs[0] + 1 - len(seqs)
            runs = _runs(seqs)
            for (_, last), (nxt, _) in zip(runs, runs[1:]):
                report.seq_gap_count += 1
                if len(report.seq_gaps) < MAX_LISTED:
                    report.seq_gaps.append(SeqGap(last + 1, nxt - 1, nxt - last - 1))
        frame_ids = sorted({fid for fid, _ in self._seq_by_frame_id})
        report.frame_ids = len(frame_ids)
        report.frame_id_ranges = [list(r) for r in _runs(frame_ids)[:MAX_LISTED]]


def _runs(sorted_values: list[int]) -> list[tuple[int, int]]:
    """[(first, last), ...] of the consecutive runs of distinct sorted integers."""
    runs = []
    for v in sorted_values:
        if runs and v == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], v)
        else:
            runs.append((v, v))
    return runs


def _chunks(source, chunk_bytes: int) -> Iterator:
    """Byte chunks of a source: bytes, a path, a binary file object or an iterable of chunks."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        view = memoryview(source)
        for i in range(0, len(view), chunk_bytes):
            yield view[i:i + chunk_bytes]
        return
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            yield from _chunks(f, chunk_bytes)
        return
    if hasattr(source, "read"):
        if isinstance(source, io.TextIOBase):
            raise TypeError("decode: the stream must be opened in binary mode ('rb')")
        while chunk := source.read(chunk_bytes):
            yield chunk
        return
    yield from source


class DecodeIterator:
    """Iterates the DecodedRecords of a source; .report is complete once iteration has ended."""

    def __init__(self, source, *, manifest=None, progress: Callable[[int], object] | None = None,
                 chunk_bytes: int = CHUNK_BYTES, **depacketizer_options):
        self.decoder = StreamDecoder(manifest, **depacketizer_options)
        self._it = self._generate(source, progress, chunk_bytes)

    @property
    def report(self) -> DecodeReport:
        return self.decoder.report

    def _generate(self, source, progress, chunk_bytes) -> Iterator[DecodedRecord]:
        for chunk in _chunks(source, chunk_bytes):
            yield from self.decoder.feed(chunk)
            if progress is not None:
                progress(len(chunk))
        yield from self.decoder.finish()

    def __iter__(self):
        return self

    def __next__(self) -> DecodedRecord:
        return next(self._it)


def iter_decode(source, *, manifest=None, progress: Callable[[int], object] | None = None,
                chunk_bytes: int = CHUNK_BYTES, **depacketizer_options) -> DecodeIterator:
    """Records of a stream one by one (bounded memory); the report is final after the last one.
    progress(n) is called with the byte count of each chunk consumed."""
    return DecodeIterator(source, manifest=manifest, progress=progress, chunk_bytes=chunk_bytes,
                          **depacketizer_options)


class DecodeResult(NamedTuple):
    records: list          # DecodedRecord, in stream order, duplicates left out
    report: DecodeReport


def decode_stream(source, *, manifest=None, progress: Callable[[int], object] | None = None,
                  chunk_bytes: int = CHUNK_BYTES, **depacketizer_options) -> DecodeResult:
    """All records of a stream and the report. Never raises on the stream's bytes; an unreadable
    path raises OSError."""
    it = iter_decode(source, manifest=manifest, progress=progress, chunk_bytes=chunk_bytes,
                     **depacketizer_options)
    records = list(it)
    return DecodeResult(records, it.report)


__all__ = ["CHUNK_BYTES", "ClassNames", "DecodeIterator", "DecodeReport", "DecodeResult",
           "DecodedRecord", "FrameIdRepeat", "RecordProblem", "SeqGap", "StreamDecoder",
           "decode_stream", "iter_decode", "summary_of"]
