"""Licence terms on what a source's data may train, beyond whether it may be used commercially.

The teacher's outputs carry the Llama 2 Community License's section 1.b.v: they may not be used to improve any
large language model other than Llama 2 or its derivative works. A source declares such a term with the model
families its data may train (`TrainingTerms`); the mix manifest lists the terms of every source it selected; the
finetune stage compares them with the family the model config declares (`model.family`) and refuses a base LLM
outside them unless explicitly overridden."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class TrainingTerms:
    """One licence term that limits which models the data may train."""

    name: str  # the licence and section, e.g. "Llama 2 Community License, section 1.b.v"
    statement: str  # what it says
    allowed_families: Sequence[str]  # model families (`model.family`) the data may train
    url: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.statement:
            raise ValueError("a training term needs its name and statement")
        if not self.allowed_families or isinstance(self.allowed_families, str):
            raise ValueError(f"terms {self.name!r}: allowed_families must list at least one model family")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "allowed_families": list(self.allowed_families)}


def terms_problems(terms: Sequence[Mapping[str, Any]], family: str | None) -> list[str]:
    """Why a model of `family` may not train on data under `terms` (the manifest's `training_terms`); empty
    when it may."""
    problems = []
    for t in terms:
        allowed = list(t["allowed_families"])
        if family is None:
            problems.append(
                f"{t['source']} ({t['records']:,} records) is under {t['name']}, which allows only {allowed}; "
                "model.family is not set, so the base LLM cannot be checked"
            )
        elif family not in allowed:
            problems.append(
                f'{t["source"]} ({t["records"]:,} records) is under {t["name"]}: "{t["statement"]}" '
                f"It allows only {allowed}; model.family is {family!r}"
            )
    return problems
