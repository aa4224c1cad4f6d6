"""tf.data's ``shuffle``, reproduced in NumPy, so that a run starts from the released code's images.

The released ``init_proto`` (``algorithms.py`` 1013–1034) draws its starting images with
``ds.shuffle(10·ipc·K, seed=seed)``. In TensorFlow 2 with no global seed set, that shuffle is
(``random_seed.get_seed``, ``shuffle_dataset_op.cc``, ``random_seed_ops.cc``,
``philox_random.h``):

1. the seed pair ``(87654321, seed mod (2³¹ − 1))`` (TensorFlow's default graph seed and the
   truncated op seed);
2. with ``reshuffle_each_iteration`` (the default) a seed generator, a Philox-4×32-10 stream
   keyed by that pair, whose first two 32-bit outputs seed the first iteration's stream;
3. a ring buffer of ``buffer_size`` slots filled in stored order; each output is the slot
   ``start + r mod (elements held)`` for the stream's next 32-bit ``r``, swapped with the slot
   at ``start``, which then advances and is refilled with the next element.

No TensorFlow code is copied or imported: this is the algorithm, written from its description.
:func:`tf_shuffle_order` equals ``tf.data.Dataset.range(n).shuffle(buffer_size, seed=seed)``
(checked against TensorFlow 2.21 by ``benchmarks/tf_shuffle_check.py``; the tests hold values it
produced).
"""

from collections.abc import Iterator

import numpy as np
from numpy.typing import ArrayLike

_M32 = 0xFFFFFFFF
_DEFAULT_GRAPH_SEED = 87654321
_MAXINT32 = 2**31 - 1
_MUL = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
_BUMP = (0x9E3779B9, 0xBB67AE85)
_CHUNK = 1024  # Philox blocks (4 outputs each) computed at a time


def philox4x32(counters: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """Philox-4×32-10 (Salmon et al., 2011) of ``counters`` (``(n, 4)`` 32-bit words, word 0
    lowest) under ``key`` (two 32-bit words): the ``(n, 4)`` ``uint32`` outputs, in
    TensorFlow's ``PhiloxRandom`` word order."""
    c = [counters[:, i].astype(np.uint64) for i in range(4)]
    k0, k1 = key[0] & _M32, key[1] & _M32
    mask = np.uint64(_M32)
    shift = np.uint64(32)
    for _ in range(10):
        p0 = c[0] * _MUL[0]  # < 2⁶⁴: both factors are below 2³²
        p1 = c[2] * _MUL[1]
        c = [
            (p1 >> shift) ^ c[1] ^ np.uint64(k0),
            p1 & mask,
            (p0 >> shift) ^ c[3] ^ np.uint64(k1),
            p0 & mask,
        ]
        k0, k1 = (k0 + _BUMP[0]) & _M32, (k1 + _BUMP[1]) & _M32
    return np.stack(c, axis=1).astype(np.uint32)


def philox_stream(seed: int, seed2: int) -> Iterator[int]:
    """The 32-bit outputs of TensorFlow's ``PhiloxRandom(seed, seed2)`` one at a time
    (``SingleSampleAdapter``): key = the two words of ``seed``, counter = ``(0, 0, seed2)``."""
    seed &= 2**64 - 1
    seed2 &= 2**64 - 1
    key = (seed & _M32, seed >> 32)
    block = 0
    while True:
        low = np.arange(block, block + _CHUNK, dtype=np.uint64)
        counters = np.stack(
            [
                low & np.uint64(_M32),
                low >> np.uint64(32),
                np.full(_CHUNK, seed2 & _M32, np.uint64),
                np.full(_CHUNK, seed2 >> 32, np.uint64),
            ],
            axis=1,
        )
        yield from philox4x32(counters, key).ravel().tolist()
        block += _CHUNK


def tf_shuffle_order(n: int, buffer_size: int, seed: int) -> Iterator[int]:
    """``0 … n−1`` in the order ``tf.data.Dataset.range(n).shuffle(buffer_size, seed=seed)``
    yields them on its first iteration (TensorFlow 2, no global seed set)."""
    if n < 0 or buffer_size < 1:
        raise ValueError(
            f"tf_shuffle_order: need n ≥ 0 and buffer_size ≥ 1, got {n} and {buffer_size}."
        )
    seeds = philox_stream(_DEFAULT_GRAPH_SEED, seed % _MAXINT32)
    draws = philox_stream(next(seeds), next(seeds))
    ring = np.empty(buffer_size, np.int64)
    start = end = following = 0
    while True:
        while end - start < buffer_size and following < n:
            ring[end % buffer_size] = following
            end += 1
            following += 1
        if end == start:
            return
        slot = (start + next(draws) % (end - start)) % buffer_size
        yield int(ring[slot])
        ring[slot] = ring[start % buffer_size]
        start += 1


def key_seed(key_data: ArrayLike) -> int:
    """The integer a PRNG key was made from: ``jax.random.key(s)``'s data are ``s``'s 32-bit
    words, high first, so this is ``s`` for ``0 ≤ s < 2⁶⁴`` (other keys: their words read as one
    number)."""
    seed = 0
    for word in np.asarray(key_data, np.uint64).ravel().tolist():
        seed = (seed << 32) | int(word)
    return seed
