"""Near-duplicate detection over conversation text: datasketch's MinHash LSH on word shingles.

Two texts are near-duplicates when the Jaccard similarity of their sets of `shingle_words`-word shingles
(lowercased words, the image token removed) is at least `threshold`. LSH proposes candidates; each is confirmed
with the MinHash estimate of the Jaccard similarity, so a pair is reported only when that estimate reaches the
threshold. Shingles are hashed with CRC-32 (deterministic across processes, and several times faster than
datasketch's default SHA-1); the MinHash permutations are seeded, so a run is reproducible.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from datasketch import MinHash, MinHashLSH

from firellava.core.chat_format import IMAGE_TOKEN

_WORD = re.compile(r"\w+")
SEED = 1


@dataclass(frozen=True)
class NearDupSpec:
    enabled: bool = True
    threshold: float = (
        0.8  # Jaccard similarity of word-shingle sets at or above which two texts are duplicates
    )
    shingle_words: int = 3
    num_perm: int = 128

    def __post_init__(self) -> None:
        if not 0 < self.threshold < 1:
            # 1 would be exact duplicates, which datagen already rejects; LSH needs room for two bands.
            raise ValueError(f"near_duplicates.threshold must be in (0, 1), got {self.threshold}")
        if self.shingle_words < 1 or self.num_perm < 16:
            raise ValueError("near_duplicates: shingle_words must be >= 1 and num_perm >= 16")


def conversation_text(conversations: Iterable[Mapping[str, Any]]) -> str:
    """Every turn's text, without the image token."""
    return "\n".join(str(t.get("value", "")).replace(IMAGE_TOKEN, "") for t in conversations)


def shingles(text: str, k: int) -> set[bytes]:
    words = _WORD.findall(text.lower())
    if len(words) <= k:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + k]).encode() for i in range(len(words) - k + 1)}


@functools.lru_cache(maxsize=4)
def _empty(num_perm: int) -> MinHash:
    # Drawing the permutations is most of the cost of one short text's signature: draw them once, copy after.
    return MinHash(num_perm=num_perm, seed=SEED, hashfunc=zlib.crc32)


def signatures(texts: Sequence[str], spec: NearDupSpec) -> list[MinHash]:
    out = []
    for text in texts:
        m = _empty(spec.num_perm).copy()
        m.update_batch(list(shingles(text, spec.shingle_words)))
        out.append(m)
    return out


class NearDupIndex:
    """Texts added one at a time; a text near-duplicating one already kept is reported (and not kept)."""

    def __init__(self, spec: NearDupSpec) -> None:
        self.spec = spec
        self.lsh = MinHashLSH(threshold=spec.threshold, num_perm=spec.num_perm)
        self.kept: dict[Hashable, MinHash] = {}

    def best_match(self, sig: MinHash, accept=lambda key: True) -> tuple[Hashable, float] | None:
        best = None
        for key in self.lsh.query(sig):
            if not accept(key):
                continue
            j = sig.jaccard(self.kept[key])
            if j >= self.spec.threshold and (best is None or j > best[1]):
                best = (key, j)
        return best

    def add(self, key: Hashable, sig: MinHash) -> None:
        self.lsh.insert(key, sig, check_duplication=False)
        self.kept[key] = sig

    def keep_first(self, key: Hashable, text: str) -> tuple[Hashable, float] | None:
        """None if `text` is new (it is then kept under `key`), else (kept key, estimated Jaccard)."""
        sig = signatures([text], self.spec)[0]
        match = self.best_match(sig)
        if match is None:
            self.add(key, sig)
        return match
