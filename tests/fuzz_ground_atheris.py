"""CAM-006 (atheris): coverage-guided fuzzing of the ground decoder (edge/ground/) with libFuzzer.

    python tests/fuzz_ground_atheris.py -atheris_runs=100000 [libFuzzer flags] [CORPUS_DIR ...]

Each input goes through edge.ground.decode.decode_stream (chunk size taken from the input, so
packets split across feeds) and every decoded record through the JSON and GeoJSON writers; the
report must serialize to JSON. Any exception is a crash (libFuzzer stops, exits non-zero, and
writes the input as a crash-* artifact). Run by tests/test_campaign_ground.py::test_cam006_atheris
in full mode (EDGE_CAMPAIGN=full); needs `atheris` (requirements-campaign.txt).
"""
from __future__ import annotations

import json
import sys

import atheris

with atheris.instrument_imports(include=["edge"]):
    from edge.ground.decode import decode_stream
    from edge.ground.outputs import features, record_to_json


def test_one_input(data: bytes) -> None:
    chunk = 1 + (data[0] if data else 0) * 64   # 1 .. 16321 bytes per feed
    records, report = decode_stream(data, chunk_bytes=chunk)
    for d in records:
        json.dumps(record_to_json(d), allow_nan=False)
        for f in features(d):
            json.dumps(f, allow_nan=False)
    if report.stream_bytes != len(data):
        raise AssertionError(f"report.stream_bytes {report.stream_bytes} != {len(data)}")
    json.dumps(report.as_dict())


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
