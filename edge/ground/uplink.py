"""Authenticated uplink, ground side: commands in, signed telecommand Space Packets out.

The packet format, the command map and the board's checks are edge/uplink.py (its module
docstring is the specification; the command map's CDDL is docs/uplink.cddl). This module makes
what the board accepts:

  encode_command(name, **params) -> bytes        the command map (CBOR, deterministic), checked
                                                 with the board's own decoder before it leaves
  CommandSigner(key, counter_path, *, spi=1, floor=None)
      .sign(command) -> bytes                    one TC packet; command: bytes (an encoded map,
                                                 sent as is) or a dict with integer keys
      .sign_ack(seqs) -> [bytes, ...]            acknowledge record seqs, split over as many
                                                 packets as the packet size needs
  ack_ranges(seqs) -> [[lo, hi], ...]            a set of seqs as sorted, disjoint, inclusive
                                                 ranges (adjacent ones merged)
  add_uplink_parsers(subparsers)                 `edge-ground ack` and `edge-ground command`

The ground's ARSN counter is durable (edge.sources.DurableCounter: atomic write + fsync): each
number is on disk before its packet is returned, so a number is never used twice, even across a
crash (a crash may skip a number: harmless, the board needs increasing, not consecutive). A
missing counter file starts at 1 (first use). A corrupt one is an error, not a silent restart at 1
(the board would refuse every command as a replay): pass floor= (`--arsn-floor N`), a number
above the board's last accepted ARSN, to go on; the same after losing the file.
"""
from __future__ import annotations

import argparse
import json
import numbers
import struct
import sys
from collections.abc import Iterable, Mapping

import cbor2

from edge.downlink.packets import PEC_LEN, SEQ_COUNT_MODULO, SEQ_UNSEGMENTED, crc16_ccitt
from edge.sources import DurableCounter
from edge.uplink import (ARSN_MAX, COMMAND_CODES, DEFAULT_MAX_TC_PACKET_BYTES, DEFAULT_SPI, KEY_CMD,
                         KEY_CONFIG_KEY, KEY_CONFIG_VALUE, KEY_FRAME_ID, KEY_IMAGE, KEY_QUESTION_ID,
                         KEY_QUESTION_TEXT, KEY_RANGES, KEY_TASK, MAC_LEN, QUESTION_TASKS, SECURITY_HEADER,
                         TC_OVERHEAD_BYTES, TC_PACKET_ID, CommandError, check_key, compute_mac,
                         decode_command, load_key)


# ---- commands ----------------------------------------------------------------------------------

def _command_map(name: str, params: dict) -> dict:
    if name not in COMMAND_CODES:
        raise ValueError(f"unknown command {name!r}; known: {sorted(COMMAND_CODES)}")
    m = {KEY_CMD: COMMAND_CODES[name]}
    params = dict(params)
    if name == "ack":
        m[KEY_RANGES] = [[int(lo), int(hi)] for lo, hi in params.pop("ranges")]
    elif name == "set_config":
        m[KEY_CONFIG_KEY] = params.pop("key")
        m[KEY_CONFIG_VALUE] = params.pop("value")
    elif name == "question":
        m[KEY_QUESTION_ID] = params.pop("id")
        m[KEY_QUESTION_TEXT] = params.pop("text")
        for key, k in (("frame_id", KEY_FRAME_ID), ("image", KEY_IMAGE)):
            value = params.pop(key, None)
            if value is not None:
                m[k] = value
        task = params.pop("task", None)
        if task is not None:
            ids = {v: k for k, v in QUESTION_TASKS.items()}
            if task not in ids:
                raise ValueError(f"question task: one of {', '.join(ids)}, got {task!r}")
            m[KEY_TASK] = ids[task]
    if params:
        raise ValueError(f"{name}: unexpected parameters {sorted(params)}")
    return m


def encode_command(name: str, **params) -> bytes:
    """The CBOR command map of `name` ("ack" ranges=[[lo, hi], ...]; "leave_safe_mode";
    "enter_safe_mode"; "set_config" key="section.key", value=...; "question" id=, text=,
    frame_id=None, image=None, task=None ("vqa" | "caption" | "grounding")). Deterministic CBOR (RFC 8949 core: sorted keys, shortest forms).
    Raises ValueError when the board would refuse it (the board's decoder is run on it)."""
    try:
        blob = cbor2.dumps(_command_map(name, params), canonical=True)
    except KeyError as e:
        raise ValueError(f"{name}: missing parameter {e.args[0]!r}") from None
    except (TypeError, cbor2.CBOREncodeError) as e:
        raise ValueError(f"{name}: cannot encode: {e}") from None
    try:
        decode_command(blob)
    except CommandError as e:
        raise ValueError(str(e)) from None
    return blob


def ack_ranges(seqs: Iterable[int]) -> list[list[int]]:
    """Sorted, disjoint, inclusive [lo, hi] ranges covering exactly `seqs` (adjacent merged)."""
    out: list[list[int]] = []
    for s in sorted(set(seqs)):
        if not isinstance(s, numbers.Integral) or isinstance(s, bool) or s < 0:
            raise ValueError(f"record seqs are integers >= 0, got {s!r}")
        s = int(s)
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out


# ---- signing -----------------------------------------------------------------------------------

def build_packet(key: bytes, spi: int, arsn: int, command: bytes) -> bytes:
    """One uplink TC packet (layout: edge/uplink.py). No checks on the command: tests use it to
    make packets with any content."""
    key = check_key(key)
    if not 0 <= arsn <= ARSN_MAX:
        raise ValueError(f"ARSN must be in 0..2^64-1, got {arsn}")
    data_len = SECURITY_HEADER.size + len(command) + MAC_LEN + PEC_LEN
    header = struct.pack(">HHH", TC_PACKET_ID, (SEQ_UNSEGMENTED << 14) | (arsn % SEQ_COUNT_MODULO),
                         data_len - 1)
    body = header + SECURITY_HEADER.pack(spi, arsn) + bytes(command)
    body += compute_mac(key, body)
    return body + struct.pack(">H", crc16_ccitt(body))


class CommandSigner:
    """Signs commands for one security association with the ground's durable ARSN counter."""

    def __init__(self, key: bytes, counter_path, *, spi: int = DEFAULT_SPI, floor: int | None = None,
                 max_packet_bytes: int = DEFAULT_MAX_TC_PACKET_BYTES):
        self._key = check_key(key)
        if not isinstance(spi, int) or isinstance(spi, bool) or not 0 <= spi <= 0xFFFF:
            raise ValueError(f"spi must be an integer in 0..65535, got {spi!r}")
        self.spi = spi
        self.max_packet_bytes = int(max_packet_bytes)
        self.counter = DurableCounter(counter_path, start=1)
        if self.counter.problem and floor is None:
            raise ValueError(f"ARSN counter {counter_path}: {self.counter.problem}. Give a floor "
                             "above the board's last accepted ARSN (--arsn-floor N) to go on")
        if floor is not None:
            if not isinstance(floor, int) or not 1 <= floor <= ARSN_MAX:
                raise ValueError(f"floor must be an ARSN in 1..2^64-1, got {floor!r}")
            if self.counter.problem or self.counter.value < floor:
                self.counter.set(floor)

    @property
    def next_arsn(self) -> int:
        return self.counter.value

    def sign(self, command) -> bytes:
        """One TC packet carrying `command` (bytes as is, or a dict with integer keys) under the
        next ARSN, which is durable before this returns."""
        if isinstance(command, Mapping):
            command = cbor2.dumps(dict(command), canonical=True)
        if not isinstance(command, (bytes, bytearray)) or not command:
            raise TypeError("command must be a non-empty CBOR byte string or a dict")
        if TC_OVERHEAD_BYTES + len(command) > self.max_packet_bytes:
            raise ValueError(f"command of {len(command)} bytes: the packet would exceed "
                             f"{self.max_packet_bytes} bytes")
        if self.counter.value > ARSN_MAX:
            raise ValueError("ARSN counter exhausted: re-key the security association")
        arsn = self.counter.take()
        return build_packet(self._key, self.spi, arsn, bytes(command))

    def sign_ack(self, seqs: Iterable[int]) -> list[bytes]:
        """Packets acknowledging exactly `seqs`, as few as the packet size allows ([] for none)."""
        return [self.sign(c) for c in ack_commands(ack_ranges(seqs), self.max_packet_bytes)]


def ack_commands(ranges: list, max_packet_bytes: int = DEFAULT_MAX_TC_PACKET_BYTES) -> list[bytes]:
    """Ack command maps carrying `ranges`, each small enough for one packet of max_packet_bytes."""
    budget = max_packet_bytes - TC_OVERHEAD_BYTES
    out, batch = [], []
    for r in ranges:
        trial = batch + [r]
        if batch and len(encode_command("ack", ranges=trial)) > budget:
            out.append(encode_command("ack", ranges=batch))
            batch = [r]
        else:
            batch = trial
    if batch:
        out.append(encode_command("ack", ranges=batch))
    if any(len(c) > budget for c in out):
        raise ValueError(f"max_packet_bytes {max_packet_bytes} cannot hold one ack range")
    return out


# ---- CLI hooks (`edge-ground ack`, `edge-ground command`) --------------------------------------

def _usage(message: str):
    from edge.ground.cli import UsageError
    return UsageError(message)


def _signer(args) -> CommandSigner:
    import warnings
    from edge.uplink import KeyFileError
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            key = load_key(args.key)
        except KeyFileError as e:
            raise _usage(f"--key: {e}") from None
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    try:
        return CommandSigner(key, args.counter, spi=args.spi, floor=args.arsn_floor)
    except ValueError as e:
        raise _usage(f"--counter: {e}") from None
    except OSError as e:
        raise _usage(f"--counter {args.counter}: {e.strerror or e}") from None


def _send(args, signer: CommandSigner, make_packets) -> dict:
    """Sign (the ARSNs are durable first) and write the packets to --out (file: appended and
    fsynced; FIFO; serial). Returns the JSON summary."""
    from edge.downlink.packets import PacketSink
    first = signer.next_arsn
    try:
        packets = make_packets()
    except ValueError as e:
        raise _usage(str(e)) from None
    except OSError as e:
        raise _usage(f"--counter {args.counter}: {e.strerror or e}") from None
    if packets:
        try:
            with PacketSink.open(args.out) as sink:
                sink.write(packets)
                sink.flush()
        except (OSError, ValueError) as e:
            raise _usage(f"--out {args.out}: {getattr(e, 'strerror', None) or e}") from None
    return {"packets": len(packets), "bytes": sum(map(len, packets)),
            "arsn": [first, signer.next_arsn - 1] if packets else None, "out": str(args.out)}


def _ack(args) -> int:
    from contextlib import ExitStack

    from edge.ground.cli import _open_binary, _Records

    seqs = set()
    with ExitStack() as stack:
        f = _open_binary(args.input, stack)
        try:
            for decoded in _Records(f, None):
                seqs.add(decoded.record.seq)
        except OSError as e:
            raise _usage(f"cannot read {args.input}: {e.strerror or e}") from None
    signer = _signer(args)
    ranges = ack_ranges(seqs)
    summary = _send(args, signer, lambda: signer.sign_ack(seqs))
    summary.update(records=len(seqs), ranges=len(ranges))
    print(json.dumps(summary))
    return 0


def _config_value(text: str):
    """VALUE of set-config: JSON when it parses (3, 0.5, true, null, "x", [1, 2]), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _command(args) -> int:
    signer = _signer(args)
    name = args.command_name
    params: dict = {}
    if name == "set_config":
        params = {"key": args.config_key, "value": _config_value(args.value)}
    elif name == "question":
        params = {"id": args.id if args.id is not None else signer.next_arsn, "text": args.text,
                  "frame_id": args.frame_id, "image": args.image, "task": args.task}
    try:
        command = encode_command(name, **params)
    except ValueError as e:
        raise _usage(str(e)) from None
    summary = _send(args, signer, lambda: [signer.sign(command)])
    summary["command"] = name
    if name == "question":
        summary["question_id"] = params["id"]
    print(json.dumps(summary))
    return 0


def _signing_options() -> argparse.ArgumentParser:
    from edge.ground.cli import _uint  # the CLI's own argument type (imported late: no cycle)

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--key", required=True, metavar="K", help="uplink key file (edge keygen)")
    p.add_argument("--counter", required=True, metavar="F",
                   help="the ground's durable ARSN counter file (created at 1)")
    p.add_argument("--out", required=True, metavar="UPLINK",
                   help="uplink: a file (appended), a FIFO or a serial device")
    p.add_argument("--spi", type=_uint, default=DEFAULT_SPI,
                   help=f"security association (default {DEFAULT_SPI})")
    p.add_argument("--arsn-floor", type=_uint, metavar="N",
                   help="take ARSNs from at least N (after losing the counter file: above the "
                        "board's last accepted ARSN)")
    return p


def add_uplink_parsers(subparsers):
    """Adds `ack` and `command` (with leave-safe-mode, enter-safe-mode, set-config, question)."""
    from edge.ground.cli import _uint

    common = _signing_options()
    p = subparsers.add_parser("ack", parents=[common],
                              help="acknowledge every record of a stream or records.jsonl (signed)")
    p.add_argument("input", metavar="STREAM_OR_JSONL", help="packet stream or records.jsonl ('-': stdin)")
    p.set_defaults(func=_ack)

    p = subparsers.add_parser("command", help="send a signed command")
    sub = p.add_subparsers(dest="uplink_command", required=True, metavar="COMMAND")
    q = sub.add_parser("leave-safe-mode", parents=[common], help="leave safe mode")
    q.set_defaults(func=_command, command_name="leave_safe_mode")
    q = sub.add_parser("enter-safe-mode", parents=[common], help="enter safe mode")
    q.set_defaults(func=_command, command_name="enter_safe_mode")
    q = sub.add_parser("set-config", parents=[common], help="set one config key (validated on board)")
    q.add_argument("config_key", metavar="KEY", help="section.key")
    q.add_argument("value", metavar="VALUE", help="JSON value (3, 0.5, true, \"text\", [1, 2]) or text")
    q.set_defaults(func=_command, command_name="set_config")
    q = sub.add_parser("question", parents=[common], help="a question for the onboard VLM")
    q.add_argument("text", metavar="TEXT")
    q.add_argument("--id", type=_uint, help="question id (default: the packet's ARSN)")
    q.add_argument("--frame-id", type=_uint, help="the frame it is about")
    q.add_argument("--image", help="an image name on the board")
    q.add_argument("--task", choices=tuple(QUESTION_TASKS.values()),
                   help="vqa, caption or grounding (default: the mission's [vlm] task)")
    q.set_defaults(func=_command, command_name="question")
    return p


__all__ = ["CommandSigner", "ack_commands", "ack_ranges", "add_uplink_parsers", "build_packet",
           "encode_command"]
