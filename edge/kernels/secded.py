"""SECDED parity of 64-bit words: single-error correction, double-error detection, for memory scrub.

Code: a (72,64) Hsiao code, the odd-weight-column SECDED code of ECC memory. Each 64-bit data word
gets one check byte; the 72-bit codeword is the 64 data bits (bit k = (word >> k) & 1) followed by
the 8 check bits (bit 64 + r = (check >> r) & 1). Check bit r is the parity of the data bits its
row of H covers: check = H_data * word over GF(2); bit r of check = parity(word & ROW_MASKS[r]).

H (8 x 72; row r = check bit r; "1" = the bit is covered; data bits 0..63, then check bits 0..7):

    bits  0..7     8..15    16..23   24..31   32..39   40..47   48..55   56..63   check 0..7
    c0    11111111 11111111 11111... ........ ........ ........ ........ 1...1111 1.......
    c1    111111.. ........ .....111 11111111 1111.... ........ ........ 11...111 .1......
    c2    1.....11 111..... .....111 11...... ....1111 111111.. ........ 111...11 ..1.....
    c3    .1....1. ...1111. .....1.. ..1111.. ....1111 ......11 1111.... 1111...1 ...1....
    c4    ..1....1 ...1...1 11....1. ..1...11 1...1... 111...11 1...111. 11111... ....1...
    c5    ...1.... 1...1..1 ..11...1 ...1..1. .11..1.. 1..11.1. .11.11.1 .11111.. .....1..
    c6    ....1... .1...1.. 1.1.1... 1...1..1 .1.1..1. .1.1.1.1 .1.11.11 ..11111. ......1.
    c7    .....1.. ..1...1. .1.11... .1...1.. 1.11...1 ..1.11.. 1.11.111 ...11111 .......1

Columns: data bit k < 56 has the k-th 3-subset of the 8 check rows (lexicographic order), data bit
56 + j the cyclic run {j, .., j+4} mod 8 (weight 5), check bit r the unit column. All 72 columns are
distinct and of odd weight, and every row covers 26 data bits (balanced: equal XOR-tree depth).

Decoding the syndrome s = H_data * word ^ check (an 8-bit value per word):
  - s == 0: clean;
  - s equals a column of H: exactly that bit flipped (a single-bit error) -- corrected;
  - anything else: uncorrectable. Two flipped bits give the XOR of two distinct odd-weight columns:
    nonzero and of even weight, so never a column -- every double error is detected and no data is
    "corrected" into wrong values. Odd syndromes that are no column (the 48 unused weight-5 values
    and the 8 weight-7 ones) are detected multi-bit errors too.
  - Limitation: three or more flipped bits can alias to a column (the XOR of three columns has odd
    weight) and are then miscorrected as a single error. That is the SECDED guarantee, not a bug;
    the scrubber's per-block CRC32C catches such blocks and restores them from the golden copy.

Report codes: 0..63 a data bit, 64..71 a check bit (64 + r), -1 (UNCORRECTABLE) anything else.
The reference below is vectorized numpy (the spec); ext/secded.c is its compiled twin (syndrome by
byte tables, or AVX512-VBMI + GFNI 8 words at a time where the CPU has them).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from edge.kernels import _backend

_fast = _backend.compiled("secded")

#: SECDED geometry: a 72-bit codeword = 64 data bits + 8 check bits, one check byte per word.
DATA_BITS = 64
CHECK_BITS = 8
CODE_BITS = DATA_BITS + CHECK_BITS
#: Event code of a word whose error cannot be corrected (double-bit or other detected multi-bit).
UNCORRECTABLE = -1


def _data_columns() -> list[int]:
    """H column (an 8-bit check-row set) of each data bit 0..63, as documented above."""
    weight3 = [sum(1 << r for r in rows) for rows in itertools.combinations(range(CHECK_BITS), 3)]
    weight5 = [sum(1 << ((j + i) % CHECK_BITS) for i in range(5)) for j in range(CHECK_BITS)]
    return weight3 + weight5  # 56 + 8 = 64


#: DATA_COLUMNS[k]: the check bits data bit k is covered by.
DATA_COLUMNS = tuple(_data_columns())
#: ROW_MASKS[r]: the data bits check bit r covers (same constants as ext/secded.c).
ROW_MASKS = np.array([sum(1 << k for k, col in enumerate(DATA_COLUMNS) if col >> r & 1)
                      for r in range(CHECK_BITS)], dtype=np.uint64)


def _decode_table() -> np.ndarray:
    """syndrome (0..255) -> event code: the bit whose column it is, else UNCORRECTABLE."""
    table = np.full(256, UNCORRECTABLE, dtype=np.int64)
    for k, col in enumerate(DATA_COLUMNS):
        table[col] = k
    for r in range(CHECK_BITS):
        table[1 << r] = DATA_BITS + r
    return table


_DECODE = _decode_table()


@dataclass(frozen=True, eq=False)
class SecdedReport:
    """What secded_check found or secded_correct did; positions in word order."""

    n_corrected: int                 # single-bit errors found (check) or corrected (correct)
    n_uncorrectable: int             # words with a double-bit or other detected multi-bit error
    corrected_words: np.ndarray      # (n_corrected,) int64 word positions
    corrected_bits: np.ndarray       # (n_corrected,) int64: 0..63 data bit, 64..71 check bit 64 + r
    uncorrectable_words: np.ndarray  # (n_uncorrectable,) int64 word positions, left unchanged

    @property
    def clean(self) -> bool:
        """No error at all."""
        return self.n_corrected == 0 and self.n_uncorrectable == 0


# ---- validation (shared by both paths) ----------------------------------------------------------

_UINT64 = np.dtype(np.uint64)
_UINT8 = np.dtype(np.uint8)


def _check_array(a, name: str, dtype: np.dtype, writable: bool) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy {dtype.name} array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype.name} (native byte order), got {a.dtype}")
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if writable and not a.flags.writeable:
        raise ValueError(f"{name} must be writable (it is corrected in place)")
    return a


def _check_pair(words, parity, writable: bool) -> tuple[np.ndarray, np.ndarray]:
    words = _check_array(words, "words", _UINT64, writable)
    parity = _check_array(parity, "parity", _UINT8, writable)
    if parity.shape[0] != words.shape[0]:
        raise ValueError(f"parity must have one check byte per word: {words.shape[0]} words, "
                         f"{parity.shape[0]} check bytes")
    if writable and np.may_share_memory(words, parity):
        raise ValueError("words and parity must not overlap in memory")
    return words, parity


# ---- reference (the spec) ------------------------------------------------------------------------

def _parity64_fold(x: np.ndarray) -> np.ndarray:
    """Parity (0/1) of each uint64 by XOR-folding every bit into bit 0 (any numpy version)."""
    for shift in (32, 16, 8, 4, 2, 1):
        x = x ^ (x >> np.uint64(shift))
    return x & np.uint64(1)


def _parity64_popcount(x: np.ndarray) -> np.ndarray:
    """Parity (0/1) of each uint64 from its popcount (numpy >= 2)."""
    return np.bitwise_count(x) & 1


_parity64 = _parity64_popcount if hasattr(np, "bitwise_count") else _parity64_fold


def _data_syndrome(words: np.ndarray) -> np.ndarray:
    """H_data * word for each word: bit r = parity(word & ROW_MASKS[r]), as uint8."""
    syndrome = np.zeros(words.shape[0], dtype=np.uint8)
    for r in range(CHECK_BITS):
        syndrome |= (_parity64(words & ROW_MASKS[r]).astype(np.uint8) << np.uint8(r))
    return syndrome


def encode_reference(words: np.ndarray, out: np.ndarray) -> None:
    """out[i] = check byte of words[i]. Arguments are already validated."""
    out[:] = _data_syndrome(words)


def scan_reference(words: np.ndarray, parity: np.ndarray, correct: bool):
    """Events (word indices, codes) of all words with a nonzero syndrome, in word order; with
    `correct`, flips each single-bit error back (in words or parity). Arguments are validated."""
    syndrome = _data_syndrome(words) ^ parity
    event_words = np.flatnonzero(syndrome).astype(np.int64)
    event_codes = _DECODE[syndrome[event_words]]
    if correct:
        data = (event_codes >= 0) & (event_codes < DATA_BITS)
        words[event_words[data]] ^= np.uint64(1) << event_codes[data].astype(np.uint64)
        check = event_codes >= DATA_BITS
        parity[event_words[check]] ^= (1 << (event_codes[check] - DATA_BITS)).astype(np.uint8)
    return event_words, event_codes


def check_reference(words: np.ndarray, parity: np.ndarray):
    """Events of all words, nothing modified (the twin of the compiled secded_check)."""
    return scan_reference(words, parity, correct=False)


def correct_reference(words: np.ndarray, parity: np.ndarray):
    """Events of all words, single-bit errors flipped back (the twin of compiled secded_correct)."""
    return scan_reference(words, parity, correct=True)


def _empty_positions() -> np.ndarray:
    empty = np.zeros(0, dtype=np.int64)
    empty.flags.writeable = False
    return empty


#: The report of a clean scan, shared (immutable: frozen, read-only empty arrays); the common case
#: of a scrub pass, answered without building arrays.
_CLEAN = SecdedReport(0, 0, _empty_positions(), _empty_positions(), _empty_positions())


def _report(event_words, event_codes) -> SecdedReport:
    if len(event_codes) == 0:
        return _CLEAN
    event_words = np.asarray(event_words, dtype=np.int64)
    event_codes = np.asarray(event_codes, dtype=np.int64)
    bad = event_codes == UNCORRECTABLE
    n_bad = int(np.count_nonzero(bad))
    return SecdedReport(
        n_corrected=int(event_codes.size) - n_bad,
        n_uncorrectable=n_bad,
        corrected_words=event_words[~bad],
        corrected_bits=event_codes[~bad],
        uncorrectable_words=event_words[bad],
    )


# ---- public API ----------------------------------------------------------------------------------

def secded_encode(words, out=None) -> np.ndarray:
    """Check bytes of `words` (1-D C-contiguous uint64): a (N,) uint8 array, written into `out`
    (1-D C-contiguous writable uint8 of length N) when given."""
    words = _check_array(words, "words", _UINT64, writable=False)
    if out is None:
        out = np.empty(words.shape[0], dtype=np.uint8)
    else:
        out = _check_array(out, "out", _UINT8, writable=True)
        if out.shape[0] != words.shape[0]:
            raise ValueError(f"out must have one check byte per word: {words.shape[0]} words, "
                             f"out has {out.shape[0]}")
        if np.may_share_memory(words, out):
            raise ValueError("out must not overlap words in memory")
    impl = _fast.secded_encode if _fast is not None else encode_reference
    impl(words, out)
    return out


def secded_check(words, parity) -> SecdedReport:
    """Compare `words` with their check bytes `parity`; nothing is modified. The report says which
    single-bit errors secded_correct would fix and which words are uncorrectable."""
    words, parity = _check_pair(words, parity, writable=False)
    impl = _fast.secded_check if _fast is not None else check_reference
    return _report(*impl(words, parity))


def secded_correct(words, parity) -> SecdedReport:
    """Correct every single-bit error IN PLACE: a data bit in `words`, a check bit in `parity`
    (both writable). Words with uncorrectable errors are reported and left unchanged."""
    words, parity = _check_pair(words, parity, writable=True)
    impl = _fast.secded_correct if _fast is not None else correct_reference
    return _report(*impl(words, parity))
