"""The QEMU arm64 flight board (firmware_sim/): the nominal and the watchdog-reset scenarios on every
`make test` (and the on-board VLM scenario), so CI keeps the emulated board working; `make sim` runs all seven.

The board boots Debian's arm64 kernel with the image of firmware_sim/image.py (built once and cached
under ~/.cache/orbit-edge/sim/, keyed by its inputs), runs the cross-built wheel's flight software under
its supervisor and sends packets over a virtio-serial radio to the ground station of firmware_sim/board.py.
"""
from __future__ import annotations

import os
import shutil

import pytest

pytestmark = [pytest.mark.sim]


@pytest.fixture(scope="module")
def images():
    if os.geteuid() != 0 or shutil.which("qemu-system-aarch64") is None:
        pytest.fail("the board needs root and qemu-system-aarch64 (make deps-apt installs it)")
    from firmware_sim.image import ensure_images

    return ensure_images()


def test_nominal_scenario(images, tmp_path):
    """Every frame's record arrives once; int8 detections identical to x86, fp32 within tolerance."""
    from firmware_sim.sim import sc_nominal

    out = sc_nominal(images, tmp_path)
    assert out.passed, out.line()
    assert out.figures["int8_identical"] == "3/3" and out.figures["fp32_within_tolerance"] is True


def test_watchdog_reset_scenario(images, tmp_path):
    """A hung supervisor stops the keepalives; the i6300esb resets the board; the flight software boots
    again and finishes from the journal and the spool: every frame once."""
    from firmware_sim.sim import sc_watchdog_reset

    out = sc_watchdog_reset(images, tmp_path)
    assert out.passed, out.line()
    assert out.figures["boots"] == 2


def test_vlm_scenario(images, tmp_path):
    """The on-board VLM on the emulated board: the tiny random LFM2-VL (models/vlm/tiny/, fp32) answers a
    questions file of the spool (VQA, grounding, caption) after the detector's records; every answer
    arrives once, identical (text and token count) to the same run on this x86 host."""
    from firmware_sim.sim import sc_vlm

    out = sc_vlm(images, tmp_path)
    assert out.passed, out.line()
    assert out.figures["answers_identical"] == "3/3"
