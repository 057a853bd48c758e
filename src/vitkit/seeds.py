"""One way to derive a seed: every random stream vitkit draws is named by integer keys."""

from __future__ import annotations

#: seeds are non-negative 63-bit integers, as every generator accepts
_SEED_BITS = 0x7FFF_FFFF_FFFF_FFFF

#: the seeding of runs begun from this version on; a checkpoint records its run's (see
#: :class:`vitkit.train.progress.Progress`), and runs begun before it (1) resume with their own
SEEDING = 2


def seed_for(*keys: int) -> int:
    """The seed of the stream named by ``keys``: the run's seed first, then what tells streams
    apart (epoch, process rank, step, sample index, a stream number), as big_vision's ``fold_in``.
    The same keys give the same seed in every process, run and machine (Python hashes tuples of
    integers without per-process randomisation); different keys give unrelated streams."""
    return hash(keys) & _SEED_BITS
