"""Exact and near-duplicate detection.

Exact: a hash of the text after Unicode (NFKC) normalisation, lower-casing and whitespace folding.
Near: MinHash signatures of word 5-grams indexed with LSH (datasketch), as in the dedup of GPT-3 / The Pile
(Broder 1997; Leskovec et al., *Mining of Massive Datasets*, ch. 3). LSH only proposes candidates (banded for
recall); a candidate counts when its estimated Jaccard similarity reaches the threshold.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from collections.abc import Iterable

import numpy as np

WORD = re.compile(r"\w+")
SHINGLE = 5
NUM_PERM = 128
SCHEME = "affine32"  # datasketch >= 2.0: 32-bit affine permutations


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def exact_key(text: str) -> bytes:
    return hashlib.blake2b(normalise(text).encode("utf-8", "surrogatepass"), digest_size=16).digest()


def shingles(text: str, n: int = SHINGLE) -> set[bytes]:
    """Word n-grams; a text shorter than n words is one shingle (so short prompts only match when equal)."""
    words = WORD.findall(normalise(text))
    if len(words) <= n:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)}


def _crc32(b: bytes) -> int:
    return zlib.crc32(b)  # deterministic across processes (unlike hash()) and much faster than sha1


class NearDuplicateIndex:
    """LSH index over MinHash signatures of texts, each stored under a key."""

    def __init__(self, threshold: float = 0.85, num_perm: int = NUM_PERM) -> None:
        from datasketch import MinHash, MinHashLSH

        self.threshold = threshold
        # LSH tuned to the threshold itself misses about half the pairs at exactly that similarity (8 bands of 16
        # rows at 0.85); banding for a lower threshold, weighted against misses, finds > 99% of them. The
        # estimated similarity then decides.
        self._lsh = MinHashLSH(threshold=max(0.1, threshold - 0.15), num_perm=num_perm, weights=(0.3, 0.7))
        self._permutations = MinHash(num_perm=num_perm, hashfunc=_crc32, seed=1, scheme=SCHEME).permutations
        self._num_perm = num_perm
        # uint32 is enough: datasketch keeps hash values below 2**32; halves the memory of a large index
        self._signatures: dict[object, np.ndarray] = {}

    def signature(self, text: str):
        from datasketch import MinHash

        m = MinHash(num_perm=self._num_perm, hashfunc=_crc32, permutations=self._permutations, scheme=SCHEME)
        m.update_batch(list(shingles(text)))
        return m

    def matches(self, sig) -> list[tuple[object, float]]:
        """Indexed keys whose estimated Jaccard similarity to `sig` reaches the threshold, most similar first."""
        values = sig.hashvalues.astype(np.uint32)
        found = [(key, float(np.mean(self._signatures[key] == values))) for key in self._lsh.query(sig)]
        return sorted((f for f in found if f[1] >= self.threshold), key=lambda f: -f[1])

    def insert(self, key: object, sig) -> None:
        self._lsh.insert(key, sig, check_duplication=False)
        self._signatures[key] = sig.hashvalues.astype(np.uint32)

    def find_or_add(self, key: object, text: str) -> tuple[object, float] | None:
        """The most similar indexed key and its similarity; when there is none, the text is indexed under `key`."""
        sig = self.signature(text)
        found = self.matches(sig)
        if found:
            return found[0]
        self.insert(key, sig)
        return None

    def __len__(self) -> int:
        return len(self._signatures)


def duplicate_clusters(texts: Iterable[str], threshold: float | None = 0.85) -> list[int]:
    """Cluster id per text: exact duplicates and (when threshold is set) near-duplicates share an id.

    Near-duplicate links are transitive (union-find), so a chain a~b~c is one cluster even when a and c differ more."""
    texts = list(texts)
    parent = list(range(len(texts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    first: dict[bytes, int] = {}
    index = NearDuplicateIndex(threshold) if threshold else None
    for i, text in enumerate(texts):
        key = exact_key(text)
        if key in first:
            union(i, first[key])
            continue
        first[key] = i
        if index is None:
            continue
        sig = index.signature(text)
        for other, _ in index.matches(sig):
            union(i, other)
        index.insert(i, sig)
    return [root(i) for i in range(len(texts))]
