"""CRC-32C: reference, compiled fast path and portable table path against the `crc32c` package."""
import array
import platform

import crc32c as crc32c_pkg
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.kernels import crc32c as kernel
from edge.kernels.crc32c import CRC32C_CHECK, crc32c, crc32c_reference
from tests.conftest import compiled_of, examples, run_both, use_impl

MAX_LEN = 4100    # all lengths 0..MAX_LEN: every head/tail split and the 3 x 256-byte interleave
ALIGNMENTS = 16   # slice offsets: every start alignment of the 8-byte loads, twice
STREAM_LONG = 8192  # bytes per stream of the long three-stream blocks in ext/crc32c.c


def pkg(data, value=0):
    return crc32c_pkg.crc32c(bytes(data), value)


def test_check_value(impl):
    with use_impl(kernel, impl):
        assert crc32c(b"123456789") == CRC32C_CHECK == 0xE3069283
        assert crc32c(b"") == 0
        assert crc32c(b"", 0x12345678) == 0x12345678  # nothing appended: the CRC is unchanged
        assert crc32c(bytes(32)) == 0x8A9136AA        # RFC 3720 B.4: 32 bytes of zeros
        assert crc32c(b"\xff" * 32) == 0x62A8AB43     # RFC 3720 B.4: 32 bytes of ones
        assert crc32c(bytes(range(32))) == 0x46DD794E  # RFC 3720 B.4: incrementing


def test_every_length_and_alignment():
    """Lengths 0..MAX_LEN at every alignment: compiled, table path and the package vs the
    reference, whose value for each prefix comes from chaining it one byte at a time."""
    fast = compiled_of(kernel)
    rng = np.random.default_rng(20261101)
    for offset in range(ALIGNMENTS):
        base = rng.integers(0, 256, MAX_LEN + ALIGNMENTS, dtype=np.uint8)
        data = base[offset:offset + MAX_LEN]
        mv = memoryview(base)[offset:offset + MAX_LEN]
        expected = 0
        for n in range(MAX_LEN + 1):
            if n:
                expected = crc32c_reference(data[n - 1:n], expected)
            assert fast.crc32c(mv[:n]) == expected, (offset, n)
            assert fast.crc32c_table(mv[:n]) == expected, (offset, n)
            assert pkg(mv[:n]) == expected, (offset, n)


@settings(max_examples=examples(200), deadline=None)
@given(st.binary(max_size=3000), st.integers(0, 15), st.integers(0, 2**32 - 1))
def test_compiled_equals_reference_and_package(blob, offset, value):
    data = memoryview(blob)[min(offset, len(blob)):]
    ref, fast = run_both(kernel, crc32c, data, value)
    assert ref == fast == pkg(data, value) == compiled_of(kernel).crc32c_table(data, value)


@pytest.mark.parametrize("n", [3 * 256 - 1, 3 * 256, 3 * STREAM_LONG - 1, 3 * STREAM_LONG,
                               3 * STREAM_LONG + 3 * 256 + 7, 2 * 3 * STREAM_LONG + 5, 1 << 20])
def test_large_buffers(n):
    fast = compiled_of(kernel)
    blob = np.random.default_rng(n).integers(0, 256, n + 8, dtype=np.uint8)
    for offset in (0, 3):
        data = blob[offset:offset + n]
        expected = pkg(data)
        assert fast.crc32c(data) == fast.crc32c_table(data) == expected
        assert crc32c(data, 0xDEADBEEF) == pkg(data, 0xDEADBEEF)


def test_large_buffer_reference():
    data = np.random.default_rng(7).integers(0, 256, 3 * STREAM_LONG + 1000, dtype=np.uint8)
    ref, fast = run_both(kernel, crc32c, data)
    assert ref == fast == pkg(data)


@settings(max_examples=examples(100), deadline=None)
@given(st.binary(max_size=2000), st.binary(max_size=2000),
       st.sampled_from(["reference", "compiled"]))
def test_continuation(a, b, impl):
    with use_impl(kernel, impl):
        assert crc32c(b, crc32c(a)) == crc32c(a + b) == pkg(a + b)
        assert crc32c(b, value=crc32c(a)) == crc32c(a + b)


@pytest.mark.parametrize("make", [
    lambda rng: rng.integers(0, 256, (17, 31), dtype=np.uint8),
    lambda rng: rng.integers(-2**31, 2**31, (5, 3, 7), dtype=np.int32),
    lambda rng: rng.standard_normal(123),
    lambda rng: rng.standard_normal(40).astype(np.float16),
    lambda rng: rng.standard_normal(10) + 1j * rng.standard_normal(10),
    lambda rng: rng.integers(0, 2, 77).astype(bool),
    lambda rng: np.arange(9).astype("datetime64[s]"),
    lambda rng: np.zeros(4, dtype="i4,f8"),
    lambda rng: np.arange(6, dtype=">u4"),
    lambda rng: np.array(3.25),
    lambda rng: np.zeros((0, 5)),
    lambda rng: rng.integers(0, 2**63, 1000, dtype=np.uint64)[10:900],
], ids=["u8-2d", "i32-3d", "f64", "f16", "c128", "bool", "datetime", "struct", "big-endian",
        "0-d", "empty-2d", "u64-slice"])
def test_numpy_arrays_hash_their_memory_bytes(make, impl):
    arr = make(np.random.default_rng(3))
    with use_impl(kernel, impl):
        assert crc32c(arr) == pkg(arr.tobytes())
        assert crc32c(arr, 99) == pkg(arr.tobytes(), 99)


def test_other_buffer_types(impl):
    data = bytes(range(256)) * 5
    with use_impl(kernel, impl):
        expected = crc32c(data)
        assert crc32c(bytearray(data)) == expected
        assert crc32c(memoryview(data)) == expected
        assert crc32c(np.frombuffer(data, np.uint8)) == expected
        assert crc32c(array.array("B", data)) == expected
        assert crc32c(memoryview(data).cast("I")) == expected  # item format does not matter
        assert crc32c(np.uint32(0x04030201)) == pkg(b"\x01\x02\x03\x04")


@pytest.mark.parametrize("data, exc, match", [
    ("123456789", TypeError, "str"),
    (None, TypeError, "data"),
    (12345, TypeError, "data"),
    ([1, 2, 3], TypeError, "data"),
    (np.array([1, "a"], dtype=object), TypeError, "object"),
    (np.arange(20, dtype=np.uint8)[::2], ValueError, "contiguous"),
    (np.zeros((4, 6), order="F"), ValueError, "contiguous"),
    (memoryview(b"abcdefgh")[::2], ValueError, "contiguous"),
])
def test_bad_data(data, exc, match, impl):
    with use_impl(kernel, impl), pytest.raises(exc, match=match):
        crc32c(data)


@pytest.mark.parametrize("value, exc", [
    (-1, ValueError), (2**32, ValueError), (2**64, ValueError),
    (1.0, TypeError), ("0", TypeError), (None, TypeError), (True, TypeError),
])
def test_bad_value(value, exc, impl):
    with use_impl(kernel, impl), pytest.raises(exc, match="value"):
        crc32c(b"abc", value)


def test_value_bounds_and_numpy_ints(impl):
    with use_impl(kernel, impl):
        assert crc32c(b"abc", 2**32 - 1) == pkg(b"abc", 2**32 - 1)
        assert crc32c(b"abc", np.uint32(7)) == pkg(b"abc", 7)


def test_compiled_direct_calls_reject_bad_input():
    """Called without the Python layer, the compiled functions raise instead of crashing."""
    fast = compiled_of(kernel)
    for fn in (fast.crc32c, fast.crc32c_table):
        with pytest.raises(TypeError):
            fn("abc")
        with pytest.raises(TypeError):
            fn(None)
        with pytest.raises(ValueError, match="contiguous"):
            fn(np.arange(10)[::2])
        with pytest.raises(ValueError, match="value"):
            fn(b"abc", 2**32)
        with pytest.raises((ValueError, OverflowError)):
            fn(b"abc", -1)
        with pytest.raises(TypeError):
            fn(b"abc", 1.5)
        assert fn(b"") == 0 and fn(b"123456789") == CRC32C_CHECK


def test_path_name():
    path = compiled_of(kernel).crc32c_path()
    assert path in ("sse4.2", "armv8-crc", "table")
    if platform.machine() in ("x86_64", "AMD64"):
        with open("/proc/cpuinfo") as f:
            has_sse42 = "sse4_2" in f.read().split()
        assert path == ("sse4.2" if has_sse42 else "table")
