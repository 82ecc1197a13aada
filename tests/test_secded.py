"""SECDED (72,64): the code's properties, every single-bit error corrected, every double-bit error
detected, reference and compiled (on each compiled syndrome path) identical, argument errors."""
import contextlib
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.kernels import _backend, secded
from edge.kernels.secded import (CHECK_BITS, CODE_BITS, DATA_BITS, DATA_COLUMNS, ROW_MASKS,
                                 UNCORRECTABLE, secded_check, secded_correct, secded_encode)
from tests.conftest import compiled_of, examples, use_impl

#: The H rows as hard-coded in ext/secded.c; the reference derives them from the column rule.
ROW_MASKS_IN_C = [0xf1000000001fffff, 0xe300000fffe0003f, 0xc7003ff003e007c1, 0x8f0fc0f03c207842,
                  0x1f71c711c4438884, 0x3eb65926488c9108, 0x7cdaaa4a91152210, 0xf8ed348d221a4420]
ALL_PATHS = ("table", "avx512-gfni", "neon")


def compiled_paths():
    """The compiled syndrome paths this CPU runs ('table' everywhere); none under EDGE_PURE_PYTHON
    (then the tests below check the reference alone)."""
    if _backend.force_reference():
        return []
    fast = compiled_of(secded)
    saved, found = fast.secded_path(), []
    for name in ALL_PATHS:
        try:
            fast.secded_set_path(name)
            found.append(name)
        except ValueError:
            pass
    fast.secded_set_path(saved)
    return found


@contextlib.contextmanager
def on_path(name):
    fast = compiled_of(secded)
    saved = fast.secded_path()
    fast.secded_set_path(name)
    try:
        yield
    finally:
        fast.secded_set_path(saved)


def implementations():
    """(label, context) for the reference and every compiled path."""
    yield "reference", lambda: use_impl(secded, "reference")
    for path in compiled_paths():
        yield f"compiled-{path}", lambda path=path: on_path(path)


def flip(words, parity, i, bit):
    """Flip codeword bit `bit` (0..63 data, 64..71 check) of word i."""
    if bit < DATA_BITS:
        words[i] ^= np.uint64(1) << np.uint64(bit)
    else:
        parity[i] ^= np.uint8(1 << (bit - DATA_BITS))


def random_words(rng, n):
    return rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)


def assert_same_report(a, b):
    assert (a.n_corrected, a.n_uncorrectable) == (b.n_corrected, b.n_uncorrectable)
    for field in ("corrected_words", "corrected_bits", "uncorrectable_words"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype == np.int64, field
        np.testing.assert_array_equal(x, y, err_msg=field)


# ---- the code itself -----------------------------------------------------------------------------

def test_hsiao_code_properties():
    columns = list(DATA_COLUMNS) + [1 << r for r in range(CHECK_BITS)]
    assert len(columns) == CODE_BITS == 72
    assert len(set(columns)) == CODE_BITS                       # distinct: singles are locatable
    assert all(bin(c).count("1") % 2 == 1 for c in columns)     # odd weight: doubles are even
    assert all(bin(c).count("1") in (3, 5) for c in DATA_COLUMNS)
    assert [bin(int(m)).count("1") for m in ROW_MASKS] == [26] * CHECK_BITS  # balanced rows
    assert [int(m) for m in ROW_MASKS] == ROW_MASKS_IN_C


def test_every_double_error_syndrome_is_detected():
    """Exhaustive over the 2556 bit pairs of the 72-bit codeword: never zero, never a column."""
    columns = set(DATA_COLUMNS) | {1 << r for r in range(CHECK_BITS)}
    cols = list(DATA_COLUMNS) + [1 << r for r in range(CHECK_BITS)]
    for a, b in itertools.combinations(range(CODE_BITS), 2):
        s = cols[a] ^ cols[b]
        assert s != 0 and s not in columns


def test_parity_fallback_for_numpy_1():
    """The XOR-fold parity (numpy < 2, no bitwise_count) equals the popcount parity."""
    x = random_words(np.random.default_rng(0), 4096)
    x[:3] = [0, 1, 2**64 - 1]
    expected = np.array([bin(int(v)).count("1") & 1 for v in x], dtype=np.uint64)
    np.testing.assert_array_equal(secded._parity64_fold(x), expected)
    np.testing.assert_array_equal(secded._parity64(x).astype(np.uint64), expected)


def test_encode_unit_vectors_and_random_words_agree():
    rng = np.random.default_rng(1)
    unit = np.uint64(1) << np.arange(DATA_BITS, dtype=np.uint64)
    words = np.concatenate([unit, random_words(rng, 1037), np.array([0, 2**64 - 1], np.uint64)])
    with use_impl(secded, "reference"):
        expected = secded_encode(words)
    np.testing.assert_array_equal(expected[:DATA_BITS], np.array(DATA_COLUMNS, np.uint8))
    for path in compiled_paths():
        with on_path(path):
            for start in range(9):  # every alignment of the 8-word vector loop and its tail
                np.testing.assert_array_equal(secded_encode(words[start:]), expected[start:], path)


@settings(max_examples=examples(100), deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), max_size=100))
def test_encode_compiled_equals_reference(values):
    words = np.array(values, dtype=np.uint64)
    with use_impl(secded, "reference"):
        expected = secded_encode(words)
    for path in compiled_paths():
        with on_path(path):
            out = np.full(len(values), 0xAA, np.uint8)
            assert secded_encode(words, out=out) is out
            np.testing.assert_array_equal(out, expected)


def test_clean_words_report_nothing():
    words = random_words(np.random.default_rng(2), 999)
    parity = secded_encode(words)
    for label, ctx in implementations():
        with ctx():
            for fn in (secded_check, secded_correct):
                report = fn(words, parity)
                assert report.clean and report.n_corrected == report.n_uncorrectable == 0, label
                assert report.corrected_words.size == report.uncorrectable_words.size == 0


# ---- single and double errors --------------------------------------------------------------------

def test_every_single_bit_error_is_corrected():
    """Word i gets bit i % 72 flipped: all 72 positions, at every alignment, on each path."""
    rng = np.random.default_rng(3)
    n = CODE_BITS * 9 + 5
    clean = random_words(rng, n)
    clean_parity = secded_encode(clean)
    bits = np.arange(n) % CODE_BITS
    for label, ctx in implementations():
        words, parity = clean.copy(), clean_parity.copy()
        for i, bit in enumerate(bits):
            flip(words, parity, i, bit)
        with ctx():
            seen = secded_check(words, parity)
            assert seen.n_corrected == n and seen.n_uncorrectable == 0, label
            np.testing.assert_array_equal(seen.corrected_words, np.arange(n))
            np.testing.assert_array_equal(seen.corrected_bits, bits)
            report = secded_correct(words, parity)
            assert_same_report(report, seen)
            np.testing.assert_array_equal(words, clean, err_msg=label)
            np.testing.assert_array_equal(parity, clean_parity, err_msg=label)
            assert secded_check(words, parity).clean


def test_every_double_bit_error_is_detected_and_left_alone():
    """All 2556 bit pairs, one per word: uncorrectable, and secded_correct changes nothing."""
    pairs = list(itertools.combinations(range(CODE_BITS), 2))
    clean = random_words(np.random.default_rng(4), len(pairs))
    clean_parity = secded_encode(clean)
    words, parity = clean.copy(), clean_parity.copy()
    for i, (a, b) in enumerate(pairs):
        flip(words, parity, i, a)
        flip(words, parity, i, b)
    for label, ctx in implementations():
        w, p = words.copy(), parity.copy()
        with ctx():
            report = secded_correct(w, p)
        assert report.n_corrected == 0 and report.n_uncorrectable == len(pairs), label
        np.testing.assert_array_equal(report.uncorrectable_words, np.arange(len(pairs)))
        np.testing.assert_array_equal(w, words, err_msg=label)
        np.testing.assert_array_equal(p, parity, err_msg=label)


@st.composite
def corrupted_buffers(draw):
    """Clean words and check bytes, then 0..3 distinct flipped codeword bits in some words."""
    n = draw(st.integers(0, 300))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    clean = random_words(rng, n)
    flips = {}
    if n:
        for i in draw(st.lists(st.integers(0, n - 1), max_size=60, unique=True)):
            k = draw(st.sampled_from([1, 1, 1, 2, 2, 3]))
            flips[i] = draw(st.lists(st.integers(0, CODE_BITS - 1), min_size=k, max_size=k,
                                     unique=True))
    return clean, flips


@settings(max_examples=examples(120), deadline=None)
@given(corrupted_buffers())
def test_mixed_errors_all_implementations_agree(case):
    clean, flips = case
    clean_parity = secded_encode(clean)
    words, parity = clean.copy(), clean_parity.copy()
    for i, bits in flips.items():
        for bit in bits:
            flip(words, parity, i, bit)
    results = []
    for label, ctx in implementations():
        w, p = words.copy(), parity.copy()
        with ctx():
            seen = secded_check(w, p)
            np.testing.assert_array_equal(w, words)  # check modifies nothing
            np.testing.assert_array_equal(p, parity)
            report = secded_correct(w, p)
        assert_same_report(seen, report)
        results.append((label, report, w, p))
    _, ref, ref_w, ref_p = results[0]
    for label, report, w, p in results[1:]:
        assert_same_report(ref, report)
        np.testing.assert_array_equal(w, ref_w, err_msg=label)
        np.testing.assert_array_equal(p, ref_p, err_msg=label)
    # what the code guarantees (3-bit errors may alias to a single error: not asserted)
    singles = sorted(i for i, bits in flips.items() if len(bits) == 1)
    doubles = sorted(i for i, bits in flips.items() if len(bits) == 2)
    assert set(singles) <= set(ref.corrected_words.tolist())
    assert set(doubles) <= set(ref.uncorrectable_words.tolist())
    assert not set(doubles) & set(ref.corrected_words.tolist())
    for i in singles:
        assert ref_w[i] == clean[i] and ref_p[i] == clean_parity[i]
        assert ref.corrected_bits[ref.corrected_words.tolist().index(i)] == flips[i][0]
    for i in doubles:
        assert ref_w[i] == words[i] and ref_p[i] == parity[i]


def test_many_errors_beyond_one_event_chunk():
    """More events than the compiled wrapper gathers per C call (256), of every kind."""
    rng = np.random.default_rng(5)
    n = 5000
    clean = random_words(rng, n)
    clean_parity = secded_encode(clean)
    words, parity = clean.copy(), clean_parity.copy()
    kinds = rng.integers(0, 3, n)  # 0 clean, 1 single, 2 double
    for i in np.flatnonzero(kinds):
        for bit in rng.choice(CODE_BITS, kinds[i], replace=False):
            flip(words, parity, i, int(bit))
    reports = []
    for label, ctx in implementations():
        w, p = words.copy(), parity.copy()
        with ctx():
            reports.append(secded_correct(w, p))
        np.testing.assert_array_equal(w[kinds == 1], clean[kinds == 1], err_msg=label)
        np.testing.assert_array_equal(w[kinds == 2], words[kinds == 2], err_msg=label)
    for report in reports:
        assert_same_report(reports[0], report)
        np.testing.assert_array_equal(report.corrected_words, np.flatnonzero(kinds == 1))
        np.testing.assert_array_equal(report.uncorrectable_words, np.flatnonzero(kinds == 2))
    # every word corrupted: the worst case a scrub can meet
    garbage = random_words(rng, 3000)
    garbage_reports = []
    for _, ctx in implementations():
        with ctx():
            garbage_reports.append(secded_check(garbage, clean_parity[:3000]))
    for report in garbage_reports:
        assert_same_report(garbage_reports[0], report)
    events = garbage_reports[0].n_corrected + garbage_reports[0].n_uncorrectable
    assert events == np.count_nonzero(secded_encode(garbage) != clean_parity[:3000])


def test_region_view_as_the_scrubber_uses_it(impl):
    """A uint8 region viewed as uint64 words: corrections through the view land in the region."""
    region = np.random.default_rng(6).integers(0, 256, 4096, dtype=np.uint8)
    golden = region.copy()
    with use_impl(secded, impl):
        parity = secded_encode(region.view(np.uint64))
        region[100] ^= 0x10          # word 12, bit 4 * 8 + 4
        parity[500] ^= 0x80          # check bit 7 of word 500
        report = secded_correct(region.view(np.uint64), parity)
    assert report.corrected_words.tolist() == [12, 500]
    assert report.corrected_bits.tolist() == [36, 71]
    np.testing.assert_array_equal(region, golden)


def test_empty_input(impl):
    words, parity = np.zeros(0, np.uint64), np.zeros(0, np.uint8)
    with use_impl(secded, impl):
        assert secded_encode(words).shape == (0,)
        for fn in (secded_check, secded_correct):
            report = fn(words, parity)
            assert report.clean and report.corrected_bits.dtype == np.int64


def test_uncorrectable_code_constant():
    assert UNCORRECTABLE == -1


# ---- argument errors -----------------------------------------------------------------------------

GOOD_WORDS = np.arange(8, dtype=np.uint64)
GOOD_PARITY = np.zeros(8, np.uint8)


def read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("words, parity, exc, match", [
    ([1, 2, 3], GOOD_PARITY[:3], TypeError, "words"),
    (np.arange(8, dtype=np.int64), GOOD_PARITY, TypeError, "words.*uint64"),
    (np.arange(8, dtype=np.float64), GOOD_PARITY, TypeError, "words.*uint64"),
    (np.arange(8, dtype=">u8"), GOOD_PARITY, TypeError, "words.*uint64"),
    (np.zeros((2, 4), np.uint64), GOOD_PARITY, ValueError, "words.*1-D"),
    (np.arange(16, dtype=np.uint64)[::2], GOOD_PARITY, ValueError, "words.*contiguous"),
    (GOOD_WORDS, GOOD_PARITY.astype(np.int8), TypeError, "parity.*uint8"),
    (GOOD_WORDS, bytes(8), TypeError, "parity"),
    (GOOD_WORDS, np.zeros(16, np.uint8)[::2], ValueError, "parity.*contiguous"),
    (GOOD_WORDS, np.zeros(7, np.uint8), ValueError, "parity.*one check byte per word"),
    (GOOD_WORDS, np.zeros(9, np.uint8), ValueError, "parity.*one check byte per word"),
])
def test_bad_words_or_parity(words, parity, exc, match, impl):
    with use_impl(secded, impl):
        for fn in (secded_check, secded_correct):
            with pytest.raises(exc, match=match):
                fn(words, parity)


def test_correct_needs_writable_buffers(impl):
    with use_impl(secded, impl):
        with pytest.raises(ValueError, match="words.*writable"):
            secded_correct(read_only(GOOD_WORDS), GOOD_PARITY.copy())
        with pytest.raises(ValueError, match="parity.*writable"):
            secded_correct(GOOD_WORDS.copy(), read_only(GOOD_PARITY))
        both = np.zeros(16, np.uint64)
        with pytest.raises(ValueError, match="overlap"):
            secded_correct(both[:8], both.view(np.uint8)[4:12])
        # checking and encoding read-only memory is fine (weights may be mapped read-only)
        parity = secded_encode(read_only(GOOD_WORDS))
        assert secded_check(read_only(GOOD_WORDS), read_only(parity)).clean


def test_bad_encode_arguments(impl):
    with use_impl(secded, impl):
        with pytest.raises(TypeError, match="words"):
            secded_encode(np.arange(4, dtype=np.uint32))
        with pytest.raises(ValueError, match="out.*one check byte per word"):
            secded_encode(GOOD_WORDS, out=np.zeros(7, np.uint8))
        with pytest.raises(TypeError, match="out.*uint8"):
            secded_encode(GOOD_WORDS, out=np.zeros(8, np.int16))
        with pytest.raises(ValueError, match="out.*writable"):
            secded_encode(GOOD_WORDS, out=read_only(GOOD_PARITY))
        with pytest.raises(ValueError, match="out.*contiguous"):
            secded_encode(GOOD_WORDS, out=np.zeros(16, np.uint8)[::2])


def test_compiled_direct_calls_reject_bad_input():
    """Without the Python layer the compiled functions raise instead of crashing."""
    fast = compiled_of(secded)
    words, parity = GOOD_WORDS.copy(), GOOD_PARITY.copy()
    for fn in (fast.secded_check, fast.secded_correct):
        with pytest.raises(ValueError, match="parity"):
            fn(words, parity[:7])
        with pytest.raises(ValueError):
            fn(words.astype(np.int32), parity)
    with pytest.raises(ValueError, match="out"):
        fast.secded_encode(words, parity[:3])
    with pytest.raises((ValueError, BufferError)):
        fast.secded_correct(read_only(words), parity)
    for fn in (fast.secded_check, fast.secded_correct, fast.secded_encode):
        with pytest.raises(TypeError):
            fn(None, parity)
        with pytest.raises(TypeError):
            fn(words, None)
    with pytest.raises(ValueError, match="not available"):
        fast.secded_set_path("no-such-path")
    assert fast.secded_path() in ALL_PATHS
