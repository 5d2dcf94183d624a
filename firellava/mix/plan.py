"""How many records each source contributes: per-source quotas and a target total, checked before anything is
drawn so that an impossible request fails with the numbers that make it impossible."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def plan_counts(
    available: Mapping[str, int],
    quotas: Mapping[str, int | float],
    target_total: int | None,
    fill_source: str | None,
) -> dict[str, int]:
    """Records to take per source.

    A quota is a count (int) or a fraction of what the source has (float in [0, 1]); a source without one
    keeps everything. With a target total, `fill_source` takes exactly what the others leave (LLaVA-1.5's
    466,898 permissive records + 121,102 generated = 588,000); without a fill source the quotas must add up
    to the target themselves.
    """
    unknown = sorted(set(quotas) - set(available))
    if unknown:
        raise ValueError(
            f"mix.quotas names source(s) {unknown} that are not in the mix; sources: {sorted(available)}"
        )
    if target_total is not None and (isinstance(target_total, bool) or target_total < 0):
        raise ValueError(f"mix.target_total must be a non-negative count or null, got {target_total!r}")
    filling = target_total is not None and fill_source is not None
    if filling and fill_source in quotas:
        raise ValueError(
            f"mix.quotas.{fill_source}: the fill source takes what mix.target_total leaves; "
            "give it no quota, or set mix.fill_source=null"
        )
    take: dict[str, int] = {}
    for name, have in available.items():
        if filling and name == fill_source:
            continue
        quota = quotas.get(name)
        if quota is None:
            take[name] = have
        elif isinstance(quota, bool) or not isinstance(quota, int | float):
            raise ValueError(f"mix.quotas.{name} must be a count or a fraction, got {quota!r}")
        elif isinstance(quota, float):
            if not 0.0 <= quota <= 1.0:
                raise ValueError(f"mix.quotas.{name}={quota}: a fraction must lie in [0, 1]")
            take[name] = round(quota * have)
        elif quota < 0:
            raise ValueError(f"mix.quotas.{name}={quota}: a count cannot be negative")
        elif quota > have:
            raise ValueError(f"mix.quotas.{name}={quota} but source {name!r} has only {have} valid records")
        else:
            take[name] = quota
    if target_total is None:
        return take
    if filling:
        need = target_total - sum(take.values())
        have = available.get(fill_source, 0)
        if need < 0:
            raise ValueError(
                f"mix.target_total={target_total} but the sources other than {fill_source!r} already give "
                f"{sum(take.values())}; lower their quotas or raise the target"
            )
        if need > have:
            raise ValueError(
                f"mix.target_total={target_total} needs {need} records from {fill_source!r} but it has only "
                f"{have} valid ones; lower mix.target_total (null keeps everything) or raise other quotas"
            )
        take[fill_source] = need
    elif sum(take.values()) != target_total:
        raise ValueError(
            f"mix.target_total={target_total} but the quotas give {sum(take.values())} records and "
            "mix.fill_source is null; make them agree"
        )
    return {name: take[name] for name in available}


def draw(items: Sequence[T], k: int, seed: int, name: str) -> list[T]:
    """A seeded sample of k items; each source has its own stream, so one quota never moves another's draw."""
    if k >= len(items):
        return list(items)
    return random.Random(f"mix/{seed}/{name}").sample(list(items), k)


def shuffle(items: list[Any], seed: int) -> list[Any]:
    random.Random(f"mix/{seed}/order").shuffle(items)
    return items
