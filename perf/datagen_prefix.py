"""Datagen benchmark: the shared-prefix fraction of prompt tokens per type (system message + few-shot examples,
what vLLM's prefix cache serves once), with the teacher's tokenizer and with Llama-2's real one (the reference
tokenizer `make install` fetches), and the generation throughput of an engine on real datagen prompts.

CPU, the toy world (build it first: `python -m firellava stages=[toy_world] paths.output_dir=/tmp/w`):
    python perf/datagen_prefix.py --world /tmp/w/toy_world --teacher /tmp/w/toy_world/models/teacher \
        --prompt-set toy
Both engines side by side in one run (CPU: `make install-vllm`, then with .venv-vllm/bin/python):
    python perf/datagen_prefix.py --world /tmp/w/toy_world --teacher /tmp/w/toy_world/models/teacher \
        --prompt-set toy --backend both --no-prefix --max-model-len 1024
GPU, vLLM with CodeLlama-34B's config and random weights (no download of the 68 GB), prefix cache on vs off:
    python perf/datagen_prefix.py --world /tmp/w/toy_world --teacher codellama/CodeLlama-34b-Instruct-hf \
        --backend vllm --load-format dummy --tensor-parallel-size 2 --per-type 256 --max-tokens 512
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from firellava.core.tokenization import load_reference_tokenizer
from firellava.datagen.contexts import TYPES, USES_BOXES, format_context, load_contexts, select_work
from firellava.datagen.prefix import shared_prefix
from firellava.datagen.prompts import prompt_set
from firellava.engines import EngineSpec, Prompt, SamplingParams, build_engine, close_engine
from firellava.toy.teacher import LLAMA2_CHAT_TEMPLATE


def prompts_by_type(world: Path, set_name: str, per_type: int, seed: int) -> dict[str, list[Prompt]]:
    annotations = world / "data" / "coco" / "annotations"
    coco = load_contexts(annotations / "instances_train.json", annotations / "captions_train.json")
    n = min(per_type, len(coco.contexts))
    work = select_work(list(coco.contexts), dict.fromkeys(TYPES, n), seed)
    ps = prompt_set(set_name)
    return {
        kind: [
            Prompt(messages=ps.messages(kind, format_context(coco.contexts[w.image_id], USES_BOXES[kind])))
            for w in work
            if w.type == kind
        ]
        for kind in TYPES
    }


def prefix_table(tokenizer, name: str, args: argparse.Namespace) -> None:
    print(f"\ntokenizer: {name}")
    print(f"{'prompt set':<10} {'type':<18} {'prefix tokens':>13} {'shared fraction':>15}")
    for set_name in ("llava", "toy"):
        by_type = prompts_by_type(args.world, set_name, min(args.per_type, 32), args.seed)
        for kind, got in shared_prefix(tokenizer, by_type).items():
            print(
                f"{set_name:<10} {kind:<18} {got['shared_prefix_tokens']:>13} {got['shared_prefix_fraction']:>15.3f}"
            )


def throughput(engine, prompts: list[Prompt], params: SamplingParams) -> dict[str, float]:
    start = time.perf_counter()
    gens = engine.generate(prompts, params)
    seconds = time.perf_counter() - start
    out = sum(g.completion_tokens for g in gens)
    total = out + sum(g.prompt_tokens for g in gens)
    return {
        "req/s": len(gens) / seconds,
        "output tok/s": out / seconds,
        "total tok/s": total / seconds,
        "s": seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--world", type=Path, required=True, help="a toy_world directory (its COCO files are used)"
    )
    ap.add_argument("--teacher", required=True, help="model directory or hub name (tokenizer + engine)")
    ap.add_argument("--backend", default="transformers", choices=["transformers", "vllm", "both"])
    ap.add_argument("--dtype", default=None, help="both engines (default: bfloat16 on CUDA, else float32)")
    ap.add_argument("--per-type", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--load-format", default="auto", help="vllm: 'dummy' = random weights, no download")
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    ap.add_argument("--max-model-len", type=int, default=4096, help="vllm: the context it reserves")
    ap.add_argument(
        "--prompt-set", default="llava", help="prompts for the throughput run (toy for the toy teacher)"
    )
    ap.add_argument("--no-generate", action="store_true", help="only the prefix fractions")
    ap.add_argument("--no-prefix", action="store_true", help="only the throughput run")
    args = ap.parse_args()
    if args.dtype is None:
        import torch

        args.dtype = "bfloat16" if torch.cuda.is_available() else "float32"

    from transformers import AutoTokenizer

    if not args.no_prefix:
        prefix_table(AutoTokenizer.from_pretrained(args.teacher), args.teacher, args)
        # Production's teacher (CodeLlama) has Llama-2's vocabulary plus a few infilling tokens: the toy tokenizer's
        # fractions say little about vLLM's prefix cache there, Llama-2's real tokenizer with its chat format does.
        reference = load_reference_tokenizer()
        reference.chat_template = LLAMA2_CHAT_TEMPLATE
        prefix_table(reference, "Llama-2 (reference tokenizer, Llama-2 chat format)", args)
    if args.no_generate:
        return

    prompts = [
        p
        for ps in prompts_by_type(args.world, args.prompt_set, args.per_type, args.seed).values()
        for p in ps
    ]
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.7, top_p=0.95, seed=args.seed)
    print(
        f"\nthroughput, {len(prompts)} {args.prompt_set}-set prompts, max_tokens={args.max_tokens}, backend={args.backend}"
    )
    if args.backend == "transformers":
        engine = build_engine(
            EngineSpec("transformers", {"batch_size": 8, "dtype": args.dtype}), args.teacher
        )
        print({k: round(v, 2) for k, v in measure(engine, prompts, params).items()})
        return
    if args.backend == "both":  # side by side: what vLLM buys over transformers generate() on this machine
        results = {}
        for backend in ("transformers", "vllm"):
            if backend == "transformers":
                spec = EngineSpec("transformers", {"batch_size": 8, "dtype": args.dtype})
            else:
                spec = EngineSpec("vllm", vllm_options(args, caching=True))
            results[backend] = measure(build_engine(spec, args.teacher), prompts, params)
            print(f"{backend:<12}", {k: round(v, 2) for k, v in results[backend].items()})
        ratio = results["vllm"]["output tok/s"] / results["transformers"]["output tok/s"]
        print(f"vllm / transformers (output tok/s): {ratio:.2f}x")
        return
    results = {}
    for caching in (True, False):  # side by side: what the shared prefix buys
        results[caching] = measure(
            build_engine(EngineSpec("vllm", vllm_options(args, caching)), args.teacher), prompts, params
        )
        print(f"prefix caching {caching}:", {k: round(v, 2) for k, v in results[caching].items()})
    ratio = results[True]["total tok/s"] / results[False]["total tok/s"]
    print(f"prefix caching speed-up (total tok/s, on/off): {ratio:.2f}x")


def vllm_options(args, caching: bool) -> dict:
    return {
        "tensor_parallel_size": args.tensor_parallel_size,
        "enable_prefix_caching": caching,
        "load_format": args.load_format,
        "max_model_len": args.max_model_len,
        "dtype": args.dtype,
        "cpu_kv_cache_bytes": 1 << 30,  # vLLM's CPU build only (firellava.engines.vllm_engine.engine_args)
    }


def measure(engine, prompts: list[Prompt], params: SamplingParams) -> dict[str, float]:
    """Throughput after a warm-up batch; the engine is closed afterwards (vLLM's engine core with it)."""
    try:
        engine.generate(prompts[:8], params)  # warm-up: graphs, allocator, first-call compilation
        return throughput(engine, prompts, params)
    finally:
        close_engine(engine)


if __name__ == "__main__":
    main()
