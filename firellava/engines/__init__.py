"""One engine interface for every generation in the project.

Text for datagen, image + text for eval and serve. Backends: `transformers` (CPU, the toy world), `vllm` (GPU, or CPU with vLLM's CPU build),
and any OpenAI-compatible HTTP endpoint. An `EngineSpec` (one `engine/<consumer>` config group) says how a model
runs; `build_engine(spec, model)` is the one constructor.
"""

from firellava.engines.base import (
    Engine,
    EngineSpec,
    Generation,
    Prompt,
    SamplingParams,
    build_engine,
    close_engine,
)

__all__ = ["Engine", "EngineSpec", "Generation", "Prompt", "SamplingParams", "build_engine", "close_engine"]
