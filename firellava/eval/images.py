"""The images each configured benchmark evaluates on, as its own loader reads them: what the mix and datagen
exclude from training (`core.decontam`). The config hands this to them (`mix.decontamination.benchmarks`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from firellava.core.decontam import EvalImage, EvalImages
from firellava.eval.benchmarks import get_benchmark


@dataclass(frozen=True)
class BenchmarkImages:
    """`names` at `splits` (default: each benchmark's first) under the eval data root."""

    names: list[str]
    data_root: str
    splits: dict[str, str] = field(default_factory=dict)

    def images(self) -> EvalImages:
        out = EvalImages()
        for name in self.names:
            bench = get_benchmark(name, self.data_root, self.splits.get(name))
            if not bench.root.is_dir():
                out.unavailable[name] = f"{name}: {bench.root} not found"
                continue
            try:
                questions = bench.load()
            except FileNotFoundError as e:
                out.unavailable[name] = str(e)
                continue
            seen: dict[object, EvalImage] = {}
            for q in questions:
                if isinstance(q.image, bytes):
                    seen.setdefault(q.image, EvalImage(name, q.qid, data=q.image))
                elif q.image is not None:
                    seen.setdefault(q.image, EvalImage(name, Path(q.image).name, path=Path(q.image)))
            out.by_benchmark[name] = list(seen.values())
        return out
