"""vLLM on the toy world's real models, on CPU where vLLM's CPU build is installed (`make test-vllm`): the exported
checkpoint as vLLM and transformers both load it, datagen and eval through the vLLM engine, the project's server on
vLLM's async engine and vLLM's own OpenAI server on the exported directory, and the same prompt tokens everywhere.

Every engine is closed explicitly and every test has a hard timeout (an engine core alive at exit can hang the
interpreter): a hang fails the run instead of stalling it.
"""

from __future__ import annotations

import base64
import os

import pytest
from PIL import Image

from firellava.engines import EngineSpec, Prompt, SamplingParams, build_engine
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


@pytest.fixture(scope="module")
def llava_dir(tiny_llava, tmp_path_factory) -> str:
    """The finetune stage's writer on the toy LLaVA: the directory both engines must load as it is."""
    from tests.llava_helpers import save_llava

    model, processor = tiny_llava
    return str(save_llava(model, processor, tmp_path_factory.mktemp("vllm") / "llava"))


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
    prompts = image_prompts()
    got = vllm_llava.generate(prompts, GREEDY)
    assert [g.text for g in got] == [g.text for g in reference]
    assert [g.completion_tokens for g in got] == [g.completion_tokens for g in reference]
    # the same prompt tokens: one BOS, the image expanded to image_seq_length placeholders
    assert [g.prompt_tokens for g in got] == [g.prompt_tokens for g in reference]


def test_one_bos_in_vllm_prompts(vllm_llava):
    from firellava.engines.vllm_engine import chat_messages, sampling_params

    tok = vllm_llava.tokenizer
    prompt = image_prompts()[0]
    out = vllm_llava.llm.chat([chat_messages(prompt)], sampling_params(GREEDY), use_tqdm=False)[0]
    ids = list(out.prompt_token_ids)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    # a raw text prompt already starting with BOS goes as token ids: still one BOS
    text = vllm_llava.llm.get_tokenizer().bos_token + "USER: hello ASSISTANT:"
    gen = vllm_llava.generate([Prompt(text=text)], GREEDY)[0]
    assert gen.prompt_tokens == len(tok(text, add_special_tokens=False)["input_ids"])
