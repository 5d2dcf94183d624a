"""One engine interface for every generation in the project (DESIGN rule 3).

Text for datagen, image + text for eval and serve. Backends: `transformers` (CPU, the toy world), `vllm` (GPU),
and any OpenAI-compatible HTTP endpoint. Build one from config with `build_engine(backend=..., **options)`.
"""

from firellava.engines.base import Engine, Generation, Prompt, SamplingParams, build_engine

__all__ = ["Engine", "Generation", "Prompt", "SamplingParams", "build_engine"]
