"""Load on the built-in server vs the same engine called in-process, side by side in one run.

N concurrent clients each send R chat requests with one image (greedy, fixed max_tokens). Prints p50/p95 latency
and requests/s for both, and the server's overhead at p50. Bounded: N x R requests, each with a timeout.

    .venv/bin/python perf/serve_load.py --model outputs/demo/finetune --clients 4 --requests 6
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import statistics
import time

from PIL import Image

from firellava.engines.base import EngineSpec, Prompt, SamplingParams, build_engine
from firellava.serve.engines import TransformersServeEngine
from firellava.serve.process import ServerProcess
from firellava.serve.settings import Limits, ServerSettings

QUESTION = "What shapes are in this image?"


def images(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (64 + i, 48), ((37 * i) % 256, 90, 200)) for i in range(n)]


def data_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


async def drive(clients: int, per_client: int, call) -> tuple[list[float], float]:
    latencies: list[float] = []

    async def client(c: int) -> None:
        for r in range(per_client):
            start = time.perf_counter()
            await asyncio.wait_for(call(c * per_client + r), 300)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    return latencies, time.perf_counter() - start


def report(label: str, latencies: list[float], wall: float) -> float:
    q = statistics.quantiles(latencies, n=20)
    p50, p95 = statistics.median(latencies), q[18]
    print(
        f"{label:<12} p50 {p50 * 1000:8.1f} ms   p95 {p95 * 1000:8.1f} ms   {len(latencies) / wall:6.2f} req/s"
    )
    return p50


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a Llava checkpoint directory")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=6, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    n = args.clients * args.requests
    imgs = images(n)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)
    spec = EngineSpec("transformers", {"batch_size": args.batch_size})

    async def in_process() -> tuple[list[float], float]:
        engine = TransformersServeEngine(build_engine(spec, args.model, "bench"))
        text = engine.render(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
        )
        try:
            await engine.generate(Prompt(text=text, images=[imgs[0]]), params)  # warm-up
            return await drive(
                args.clients,
                args.requests,
                lambda i: engine.generate(Prompt(text=text, images=[imgs[i]]), params),
            )
        finally:
            engine.close()

    async def over_http(base_url: str) -> tuple[list[float], float]:
        from openai import AsyncOpenAI

        client = AsyncOpenAI(base_url=base_url + "/v1", api_key="none", max_retries=0, timeout=300)
        uris = [data_uri(img) for img in imgs]

        def call(i: int):
            content = [
                {"type": "image_url", "image_url": {"url": uris[i]}},
                {"type": "text", "text": QUESTION},
            ]
            return client.chat.completions.create(
                model="bench",
                messages=[{"role": "user", "content": content}],
                max_tokens=args.max_tokens,
                temperature=0,
            )

        await call(0)  # warm-up
        try:
            return await drive(args.clients, args.requests, call)
        finally:
            await client.close()

    settings = ServerSettings(
        model=args.model,
        model_name="bench",
        port=0,
        engine=spec,
        limits=Limits(max_pending_requests=max(64, n)),
        log_level="warning",
    )
    print(
        f"{args.clients} clients x {args.requests} requests, max_tokens {args.max_tokens}, batch {args.batch_size}"
    )
    local = report("in-process", *asyncio.run(in_process()))
    with ServerProcess(settings) as server:
        remote = report("server", *asyncio.run(over_http(server.base_url)))
    print(f"server overhead at p50: {100 * (remote / local - 1):+.1f}%")


if __name__ == "__main__":
    main()
