"""The emulated flight board: qemu-system-aarch64 with the images of firmware_sim/image.py.

    board = Board(images, workdir, memory_mb=1024)
    board.prepare(frames, mission, scenario)        # the data disk: spool, mission config, key
    run = board.boot(timeout_s=300)                 # starts QEMU and the ground station
    run.wait()                                      # until the guest powers off (or board.kill())
    ground = board.ground                           # what reached the ground: records, report

The machine: `-M virt -cpu cortex-a53 -smp 2 -m 1024` (memory configurable down to 512), Debian's arm64
kernel with the initramfs, /dev/vda the read-only root image (shared by every run, opened read-only),
/dev/vdb the run's writable data disk (an ext4 image made by `mke2fs -d` from a staging directory, no loop
mount), an i6300esb watchdog with `-action watchdog=reset` (a hung supervisor really resets the board,
and the guest boots again: QEMU exits only when the guest powers off), the serial console appended to
serial.log, and a virtio-serial device with two ports: "radio-down" (the packet stream, appended to
downlink.bin) and "radio-up" (a Unix socket the ground station writes signed acknowledgements to).

The ground station (a thread) follows downlink.bin as it grows, decodes it with edge.ground's
StreamDecoder, stamps every record's arrival, and every ACK_PERIOD_S signs an acknowledgement of the
records received so far (edge.ground.uplink.CommandSigner) and sends it up: the flight journal frees
them. Boots and resets are counted from the serial log ("orbit-init: boot N").
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Seconds between the ground's acknowledgements.
ACK_PERIOD_S = 2.0
#: Data disk size beyond its files (journal, state, spool moves).
DATA_SLACK_MB = 64
BOOT_LINE = re.compile(r"orbit-init: boot (\d+)")


@dataclass
class Received:
    """One record as the ground got it, with the host time it arrived."""

    record: object        # edge.ground.records.Record
    arrived: float        # time.monotonic()


class GroundStation(threading.Thread):
    """Follows the downlink file, decodes it, acknowledges what arrived (see the module docstring)."""

    def __init__(self, downlink: Path, up_socket: Path, key: bytes, counter: Path):
        super().__init__(daemon=True, name="ground")
        from edge.ground.decode import StreamDecoder
        from edge.ground.uplink import CommandSigner

        self.downlink, self.up_socket = downlink, up_socket
        self.decoder = StreamDecoder(manifest=False)
        self.signer = CommandSigner(key, counter)
        self.received: list[Received] = []
        self.seqs: set[int] = set()
        self.acked: set[int] = set()
        self.offset = 0
        self._halt = threading.Event()
        self._sock = None
        self.ack_packets = 0
        self.lock = threading.Lock()

    def run(self) -> None:
        last_ack = time.monotonic()
        while not self._halt.is_set():
            self.poll()
            if time.monotonic() - last_ack >= ACK_PERIOD_S:
                self.acknowledge()
                last_ack = time.monotonic()
            self._halt.wait(0.1)
        self.poll()

    def poll(self) -> None:
        try:
            with open(self.downlink, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        if not data:
            return
        self.offset += len(data)
        now = time.monotonic()
        with self.lock:
            for d in self.decoder.feed(data):
                self.received.append(Received(d.record, now))
                self.seqs.add(d.record.seq)

    def acknowledge(self) -> None:
        with self.lock:
            new = sorted(self.seqs - self.acked)
        if not new:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.connect(str(self.up_socket))
            for packet in self.signer.sign_ack(new):
                self._sock.sendall(packet)
                self.ack_packets += 1
            self.acked.update(new)
        except OSError:  # the board is not up (yet), or was powered off: try again later
            if self._sock is not None:
                self._sock.close()
            self._sock = None

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # ---- what arrived --------------------------------------------------------------------------
    def records(self, kind: str | None = None) -> list:
        """Distinct records (first arrival of each seq), optionally of one kind."""
        seen, out = set(), []
        with self.lock:
            for r in self.received:
                if r.record.seq in seen:
                    continue
                seen.add(r.record.seq)
                if kind is None or r.record.kind == kind:
                    out.append(r)
        return out

    def report(self) -> dict:
        with self.lock:
            return self.decoder.report.as_dict() if hasattr(self.decoder, "report") else {}


class Board:
    """One emulated flight board and its data disk (see the module docstring)."""

    def __init__(self, images, workdir: Path, *, memory_mb: int = 1024, smp: int = 2):
        self.images, self.workdir = images, Path(workdir)
        self.memory_mb, self.smp = memory_mb, smp
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_img = self.workdir / "data.img"
        self.serial = self.workdir / "serial.log"
        self.downlink = self.workdir / "downlink.bin"
        self.up_socket = self.workdir / "radio-up.sock"
        self.key_path = self.workdir / "uplink.key"
        self.proc: subprocess.Popen | None = None
        self.ground: GroundStation | None = None
        self.boots_started = 0

    # ---- the data disk ----------------------------------------------------------------------------
    def prepare(self, frames, mission: str, scenario: dict | None = None, extra: dict | None = None) -> None:
        """frames: [(name, uint16 array HWC, sidecar dict)]; mission: the TOML text (paths /data/...);
        extra: {path under /data: a host directory (copied) or bytes (written)}, e.g. a VLM model
        directory and a questions file for the spool."""
        from edge.uplink import generate_key, write_key

        stage = self.workdir / "data"
        shutil.rmtree(stage, ignore_errors=True)
        (stage / "spool").mkdir(parents=True)
        (stage / "sim").mkdir()
        total = 0
        for name, arr, side in frames:
            arr.tofile(stage / "spool" / f"{name}.raw")
            (stage / "spool" / f"{name}.json").write_text(json.dumps(
                {"shape": list(arr.shape), "dtype": str(arr.dtype), **side}))
            total += arr.nbytes
        (stage / "mission.toml").write_text(mission)
        for rel, src in (extra or {}).items():
            dest = stage / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(src, (bytes, bytearray)):
                dest.write_bytes(src)
                total += len(src)
            else:
                shutil.copytree(src, dest)
                total += sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
        if scenario is not None:
            (stage / "sim" / "scenario.json").write_text(json.dumps(scenario))
        key = generate_key()
        write_key(self.key_path, key, force=True)
        shutil.copy2(self.key_path, stage / "uplink.key")
        self.key = key
        size_mb = total // (1 << 20) + DATA_SLACK_MB
        self.data_img.unlink(missing_ok=True)
        subprocess.run(["mke2fs", "-q", "-t", "ext4", "-L", "orbit-data", "-d", str(stage),
                        str(self.data_img), f"{size_mb}M"], check=True)
        for p in (self.serial, self.downlink):
            p.unlink(missing_ok=True)
        counter = self.workdir / "ground-arsn"
        counter.unlink(missing_ok=True)
        self.ground = GroundStation(self.downlink, self.up_socket, key, counter)

    # ---- running ------------------------------------------------------------------------------------
    def command(self) -> list[str]:
        img = self.images
        return ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a53", "-smp", str(self.smp),
                "-m", str(self.memory_mb), "-nographic", "-monitor", "none",
                "-kernel", str(img.kernel), "-initrd", str(img.initrd),
                "-append", "console=ttyAMA0 panic=5 quiet",
                "-drive", f"file={img.root},if=none,format=raw,id=root,readonly=on",
                "-device", "virtio-blk-pci,drive=root",
                "-drive", f"file={self.data_img},if=none,format=raw,id=data",
                "-device", "virtio-blk-pci,drive=data",
                "-device", "i6300esb", "-action", "watchdog=reset",
                "-chardev", f"file,id=ser,path={self.serial},append=on", "-serial", "chardev:ser",
                "-device", "virtio-serial-pci",
                "-chardev", f"file,id=down,path={self.downlink},append=on",
                "-device", "virtserialport,chardev=down,name=radio-down",
                "-chardev", f"socket,id=up,path={self.up_socket},server=on,wait=off",
                "-device", "virtserialport,chardev=up,name=radio-up"]

    def boot(self) -> "Board":
        """Start QEMU on the data disk as it is (a second boot after a power cut reuses it)."""
        self.up_socket.unlink(missing_ok=True)
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.workdir / "qemu.stderr", "ab"),
                                     start_new_session=True)
        self.boots_started += 1
        if self.ground.ident is None:   # one ground station for every boot of this board
            self.ground.start()
        return self

    def wait(self, timeout_s: float) -> int:
        """Until QEMU exits (the guest powered off); kills it after timeout_s (returns -9 then)."""
        try:
            rc = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = -9
        self.ground.poll()
        return rc

    def wait_for(self, predicate, timeout_s: float, poll_s: float = 0.2) -> bool:
        """Until predicate() is true (checked every poll_s) or QEMU exits or the time is up."""
        t_end = time.monotonic() + timeout_s
        while time.monotonic() < t_end:
            if predicate():
                return True
            if self.proc.poll() is not None:
                return predicate()
            time.sleep(poll_s)
        return False

    def kill(self) -> None:
        """Pull the plug: SIGKILL QEMU (a power cut: nothing in the guest gets to react)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop_ground(self) -> None:
        if self.ground is not None:
            self.ground.stop()

    # ---- what the board said --------------------------------------------------------------------
    def serial_text(self) -> str:
        try:
            return self.serial.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def boots(self) -> int:
        """Boots of the flight software seen in the serial log (boot N lines)."""
        return len(BOOT_LINE.findall(self.serial_text()))

    def data_file(self, path: str) -> bytes | None:
        """A file of the data disk (read with debugfs, no mount), None when absent."""
        res = subprocess.run(["debugfs", "-R", f"cat {path}", str(self.data_img)],
                             capture_output=True)
        return res.stdout if res.returncode == 0 and res.stdout else None

    def data_listing(self, path: str) -> list[str]:
        res = subprocess.run(["debugfs", "-R", f"ls -l {path}", str(self.data_img)], capture_output=True,
                             text=True)
        names = []
        for line in res.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 9 and parts[-1] not in (".", ".."):
                names.append(parts[-1])
        return names


def frame_detections(record) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return record.boxes, record.scores, record.class_ids


__all__ = ["Board", "GroundStation", "Received", "frame_detections"]
