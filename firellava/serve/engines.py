"""The server's engines: the project's engines, made async.

`TransformersServeEngine` runs a `TransformersEngine` in one worker thread that batches concurrent requests (same
sampling parameters, up to the engine's batch size) and streams tokens for `stream=true` requests (those run one
at a time: transformers' streamer takes a single sequence). On a GPU, `firellava.engines.vllm_engine`'s
`AsyncVLLMEngine` serves with vLLM's continuous batching.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from firellava.engines.base import Generation, Prompt, SamplingParams, build_engine

if TYPE_CHECKING:
    from firellava.engines.transformers_engine import TransformersEngine
    from firellava.serve.settings import ServerSettings

log = logging.getLogger(__name__)


class ServeEngine(Protocol):
    model_name: str
    image_tokens: int  # placeholder tokens one image occupies (576 for CLIP-L/14-336)
    max_model_len: int | None

    def render(self, messages: Sequence[dict[str, Any]]) -> str:
        """The checkpoint's own chat template, with the generation prompt."""
        ...

    async def generate(self, prompt: Prompt, params: SamplingParams) -> Generation: ...

    def stream(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[str | Generation]:
        """Text pieces as they are generated, then the final Generation (whose text is authoritative)."""
        ...

    def healthy(self) -> bool: ...

    def expect(self, n: int) -> None:
        """Hint: `n` requests will be submitted shortly (a batching engine may wait for them)."""
        ...

    def close(self) -> None: ...


@dataclass
class _Job:
    prompt: Prompt
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    stream: bool
    out: asyncio.Queue  # pieces, then the Generation or an exception
    cancelled: threading.Event = field(default_factory=threading.Event)

    def send(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)


class TransformersServeEngine:
    def __init__(
        self, engine: TransformersEngine, batch_wait_s: float = 0.02, max_batch_wait_s: float = 0.25
    ) -> None:
        self.engine = engine
        self.model_name = engine.model_name
        config = self.engine.model.config
        self.image_tokens = int(getattr(config, "image_seq_length", 0) or 0)
        text_config = getattr(config, "text_config", config)
        self.max_model_len = getattr(text_config, "max_position_embeddings", None)
        self.batch_wait_s = batch_wait_s
        self.max_batch_wait_s = max_batch_wait_s
        self._expected = 0
        self._lock = threading.Lock()
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._held: list[_Job] = []  # jobs taken from the queue that did not fit the current batch
        self._alive = True
        self._thread = threading.Thread(target=self._work, name="serve-engine", daemon=True)
        self._thread.start()

    def render(self, messages: Sequence[dict[str, Any]]) -> str:
        return self.engine.render(Prompt(messages=list(messages)))

    def expect(self, n: int) -> None:
        """`n` more (or, negative, fewer) requests admitted and about to be submitted (their images are loading)."""
        with self._lock:
            self._expected += n

    def healthy(self) -> bool:
        return self._alive and self._thread.is_alive()

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    # ------------------------------------------------------------------------------------------- async side

    def _submit(self, prompt: Prompt, params: SamplingParams, stream: bool) -> _Job:
        job = _Job(prompt, params, asyncio.get_running_loop(), stream, asyncio.Queue())
        self._jobs.put(job)
        return job

    async def generate(self, prompt: Prompt, params: SamplingParams) -> Generation:
        job = self._submit(prompt, params, stream=False)
        try:
            item = await job.out.get()
        finally:
            job.cancelled.set()  # no-op when done; skips or stops the work when the caller gave up
        if isinstance(item, BaseException):
            raise item
        return item

    async def stream(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[str | Generation]:
        job = self._submit(prompt, params, stream=True)
        try:
            while True:
                item = await job.out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Generation):
                    return
        finally:
            job.cancelled.set()

    # ------------------------------------------------------------------------------------------- worker

    def _next(self, timeout: float | None) -> _Job | None:
        if self._held:
            return self._held.pop(0)
        return self._jobs.get(timeout=timeout) if timeout is not None else self._jobs.get()

    def _work(self) -> None:
        while True:
            job = self._next(None)
            if job is None:
                self._alive = False
                return
            if job.cancelled.is_set():
                continue
            if job.stream:
                self._run_stream(job)
                continue
            self._run_batch(self._collect(job))

    def _collect(self, first: _Job) -> list[_Job]:
        """`first` plus the jobs that can share its batch: same sampling parameters, not streamed."""
        size = self.engine.batch_size
        batch, keep = [first], []
        for job in self._held:
            fits = len(batch) < size and not job.stream and job.params == first.params
            (batch if fits else keep).append(job)
        self._held = keep
        start = time.monotonic()
        while len(batch) < size:
            # Wait longer while admitted requests are still fetching their images: they are about to join.
            wait = self.max_batch_wait_s if self._expected > 0 else self.batch_wait_s
            budget = wait - (time.monotonic() - start)
            if budget <= 0:
                break
            try:
                job = self._jobs.get(timeout=min(budget, self.batch_wait_s))
            except queue.Empty:
                continue
            if job is None:
                self._jobs.put(None)  # shut down after this batch
                break
            if job.stream or job.params != first.params:
                self._held.append(job)
            elif not job.cancelled.is_set():
                batch.append(job)
        return batch

    def _run_batch(self, batch: list[_Job]) -> None:
        start = time.perf_counter()
        try:
            results = self.engine.generate([j.prompt for j in batch], batch[0].params)
        except Exception as e:  # reported to every waiting request; the worker keeps serving
            log.exception("generation failed for a batch of %d", len(batch))
            for j in batch:
                j.send(e)
            return
        for j, g in zip(batch, results):
            j.send(g)
        log.debug("batch of %d in %.2fs", len(batch), time.perf_counter() - start)

    def _run_stream(self, job: _Job) -> None:
        pieces = self.engine.stream(job.prompt, job.params)
        try:
            while True:
                if job.cancelled.is_set():
                    pieces.close()  # stops the generation at the next token
                    return
                try:
                    job.send(next(pieces))
                except StopIteration as done:
                    job.send(done.value)
                    return
        except Exception as e:
            log.exception("streamed generation failed")
            job.send(e)


def build_serve_engine(settings: ServerSettings) -> ServeEngine:
    """The engine `settings.engine` (engine.serve) names, serving `settings.model` as `settings.model_name`."""
    spec = settings.engine
    if spec.backend == "vllm":
        from firellava.engines.vllm_engine import AsyncVLLMEngine

        return AsyncVLLMEngine(settings.model, settings.model_name, **spec.options)
    return TransformersServeEngine(
        build_engine(spec, settings.model, settings.model_name),
        batch_wait_s=settings.limits.batch_wait_s,
        max_batch_wait_s=settings.limits.max_batch_wait_s,
    )
