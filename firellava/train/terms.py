"""The finetune stage's licence check: the terms in the manifest of the data it trains on (the mix stage's
`training_terms`) against the base LLM's family (`model.family`). A model outside the allowed families is refused
before any process starts, unless `train.allow_terms_override=true`, which is logged loudly and written into the
model card."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from firellava.core.io import read_json
from firellava.core.model_builder import ModelSpec
from firellava.core.terms import terms_problems

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"  # the mix stage writes it beside the mix


def check_terms(
    data_json: str | Path, model: ModelSpec, override: bool
) -> tuple[dict[str, Any] | None, dict]:
    """(the data's mix manifest or None, the terms check as the model card records it); raises PermissionError
    when the terms do not allow `model.family` and `override` is off."""
    manifest_path = Path(data_json).resolve().parent / MANIFEST
    if not manifest_path.is_file():
        log.warning(
            "%s: no mix manifest beside the training data; its licences and terms are unknown and not checked",
            manifest_path,
        )
        statement = (
            f"The training data ({data_json}) came without a mix manifest: its terms were not checked."
        )
        return None, {"manifest": None, "family": model.family, "applied": [], "problems": [],
                      "overridden": False, "statement": statement}  # fmt: skip
    manifest = read_json(manifest_path)
    applied = manifest.get("training_terms") or []
    problems = terms_problems(applied, model.family)
    if problems and not override:
        listed = "\n  ".join(problems)
        raise PermissionError(
            f"{manifest_path}: the training data's terms do not allow training {model.llm} "
            f"(model.family={model.family!r}):\n  {listed}\n"
            "Train a model of an allowed family (and declare it in model.family), or, if you hold other rights "
            "to the data, set train.allow_terms_override=true (the model card will say so)."
        )
    if problems:
        log.warning("=" * 100)
        log.warning("TRAINING TERMS OVERRIDDEN (train.allow_terms_override=true); the model card records it:")
        for p in problems:
            log.warning("  %s", p)
        log.warning("=" * 100)
        statement = (
            f"TERMS OVERRIDDEN: this model (family {model.family!r}) was trained although the data's terms do "
            f"not allow it (train.allow_terms_override=true): {' '.join(problems)}"
        )
    elif applied:
        families = sorted({f for t in applied for f in t["allowed_families"]})
        statement = (
            f"The base LLM's family {model.family!r} is allowed by every term above ({', '.join(families)}); "
            "a model derived from this one stays under the same terms."
        )
    else:
        statement = "The training data carries no terms on which models it may train."
    log.info("training terms: %s", statement)
    check = {
        "manifest": str(manifest_path),
        "family": model.family,
        "applied": applied,
        "problems": problems,
        "overridden": bool(problems),
        "statement": statement,
    }
    return manifest, check
