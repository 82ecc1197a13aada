"""CRC-32C (Castagnoli) of memory buffers: the block checksum of the scrubber's golden copies.

CRC-32C is CRC-32 with the Castagnoli polynomial 0x1EDC6F41 (iSCSI, ext4, SSE4.2 and the ARMv8 CRC
extension compute it in hardware), processed LSB first: register preset to 0xFFFFFFFF, reflected
polynomial 0x82F63B78, result inverted. `value` chains calls exactly like zlib.crc32 and the
`crc32c` package: crc32c(b, crc32c(a)) == crc32c(a + b). Check: crc32c(b"123456789") == 0xE3069283.

The reference below is the textbook byte-at-a-time table loop (slow, it is the spec); the compiled
twin (ext/crc32c.c) uses the CPU's crc32 instruction on three interleaved streams when there is one
(SSE4.2 or ARMv8 CRC, detected at run time) and slicing-by-8 tables otherwise.
"""
from __future__ import annotations

import numbers

import numpy as np

from edge.kernels import _backend

_fast = _backend.compiled("crc32c")

#: Castagnoli polynomial 0x1EDC6F41 with its bits reversed (the register shifts right, LSB first).
CRC32C_POLY_REFLECTED = 0x82F63B78
#: Register preset and final XOR: all ones, so leading zero bytes change the CRC.
CRC32C_XOR = 0xFFFFFFFF
#: crc32c(b"123456789"), the catalogue check value of CRC-32C.
CRC32C_CHECK = 0xE3069283


def _byte_table() -> list[int]:
    """table[b]: the register after shifting byte b through it with all-zero state (8 steps)."""
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ CRC32C_POLY_REFLECTED if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _byte_table()


def byte_view(data) -> np.ndarray:
    """The bytes of any C-contiguous buffer as a flat uint8 array, without a copy.

    Raises TypeError for objects without the buffer protocol (str, None, ...) and for numpy object
    arrays (their bytes are pointers), ValueError for non-contiguous buffers.
    """
    if isinstance(data, str):
        raise TypeError("data must be a bytes-like object (a buffer), not str")
    if isinstance(data, np.ndarray) and data.dtype.hasobject:
        raise TypeError("data must not be a numpy object array (its bytes are pointers)")
    try:
        # frombuffer asks for the raw bytes (no item format): every dtype and buffer exporter works
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:
        raise TypeError(f"data must be a bytes-like object (a buffer), got {type(data).__name__}") \
            from None
    except (ValueError, BufferError) as exc:
        raise ValueError(f"data must be a C-contiguous buffer: {exc}") from None


def check_data(data):
    """`data` itself when it is a valid buffer (bytes, bytearray, C-contiguous non-object ndarray:
    the cheap checks the scrubber's per-block calls take), else its byte_view (or the error)."""
    kind = type(data)
    if kind is bytes or kind is bytearray:
        return data
    if kind is np.ndarray and data.flags.c_contiguous and not data.dtype.hasobject:
        return data
    return byte_view(data)


def check_value(value) -> int:
    """`value` (a previous CRC) as an int in 0..2**32-1, or TypeError / ValueError."""
    if type(value) is not int:
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise TypeError(f"value must be an int (a previous CRC), got {type(value).__name__}")
        value = int(value)
    if not 0 <= value <= CRC32C_XOR:
        raise ValueError(f"value must be a CRC in 0..2**32-1, got {value}")
    return value


def crc32c_reference(data, value: int) -> int:
    """CRC-32C of the bytes of `data` (a buffer check_data accepted), continuing from `value`."""
    crc = value ^ CRC32C_XOR  # undo the previous final inversion (for value=0: the preset)
    for byte in memoryview(byte_view(data)):  # a 1-D uint8 array: its memoryview yields ints
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ CRC32C_XOR


def crc32c(data, value: int = 0) -> int:
    """CRC-32C of the bytes of `data`, continuing from `value` (0 to start).

    data: any C-contiguous buffer -- bytes, bytearray, memoryview, numpy arrays of any dtype and
    shape (their bytes in memory order). crc32c(b, crc32c(a)) == crc32c(a + b).
    Raises TypeError (not a buffer, object array, non-int value) or ValueError (non-contiguous
    buffer, value outside 0..2**32-1).
    """
    data = check_data(data)
    value = check_value(value)
    impl = _fast.crc32c if _fast is not None else crc32c_reference
    return impl(data, value)
