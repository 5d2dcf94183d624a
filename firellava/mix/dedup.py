"""Generated records that near-duplicate a permissive record of the same image are left out of the mix.

Only images that both the generated source and some other source use are looked at. Each such image's
permissive records go into a MinHash LSH index (`core.neardup`); a generated record of that image whose
conversation text reaches the Jaccard threshold with one of them is dropped, and the permissive record stays:
it is the one with a human-annotated origin. Images are processed in batches so the index stays small.
"""

from __future__ import annotations

import json
import time
from collections.abc import MutableMapping, Sequence
from typing import Any

from firellava.core.neardup import NearDupIndex, NearDupSpec, conversation_text, signatures

BATCH_RECORDS = 50_000  # permissive records per LSH index


def _text(item: Any) -> str:
    return conversation_text(json.loads(item.text).get("conversations", []))


def drop_generated_near_duplicates(
    items: MutableMapping[str, list], generated: str, spec: NearDupSpec
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Remove them from `items[generated]` (items have `.image`, `.text`, `.id`, `.where`); return the
    dropped records' entries and the figures for the manifest."""
    start = time.perf_counter()
    gen = items.get(generated, [])
    gen_images = {it.image for it in gen if it.image is not None}
    refs: dict[str, list[tuple[str, Any]]] = {}
    for name, its in items.items():
        if name == generated:
            continue
        for it in its:
            if it.image in gen_images:
                refs.setdefault(it.image, []).append((name, it))
    candidates: dict[str, list[int]] = {}
    for i, it in enumerate(gen):
        if it.image in refs:
            candidates.setdefault(it.image, []).append(i)
    dropped: dict[int, dict[str, Any]] = {}
    for batch in _batches(sorted(candidates), refs):
        ref_list = [ref for image in batch for ref in refs[image]]
        index = NearDupIndex(spec)
        for k, sig in enumerate(signatures([_text(it) for _, it in ref_list], spec)):
            index.add(k, sig)
        gen_ids = [i for image in batch for i in candidates[image]]
        for i, sig in zip(gen_ids, signatures([_text(gen[i]) for i in gen_ids], spec)):
            image = gen[i].image
            match = index.best_match(
                sig, accept=lambda k, image=image, refs=ref_list: refs[k][1].image == image
            )
            if match is not None:
                name, ref = ref_list[match[0]]
                dropped[i] = {
                    "source": generated,
                    "where": gen[i].where,
                    "id": gen[i].id,
                    "image": image,
                    "jaccard": round(match[1], 3),
                    "duplicate_of": {"source": name, "where": ref.where, "id": ref.id},
                }
    if dropped:
        items[generated] = [it for i, it in enumerate(gen) if i not in dropped]
    figures = {
        "threshold": spec.threshold,
        "shingle_words": spec.shingle_words,
        "num_perm": spec.num_perm,
        "shared_images": len(candidates),
        "generated_checked": sum(len(v) for v in candidates.values()),
        "permissive_checked": sum(len(refs[image]) for image in candidates),
        "removed": len(dropped),
        "seconds": round(time.perf_counter() - start, 1),
        "rule": "a generated record is dropped when its conversation's word-shingle Jaccard similarity with a "
        "record of another source for the same image reaches the threshold (MinHash LSH estimate)",
    }
    return [dropped[i] for i in sorted(dropped)], figures


def _batches(images: Sequence[str], refs: dict[str, list]) -> list[list[str]]:
    out: list[list[str]] = [[]]
    n = 0
    for image in images:
        if n >= BATCH_RECORDS:
            out.append([])
            n = 0
        out[-1].append(image)
        n += len(refs[image])
    return [b for b in out if b]
