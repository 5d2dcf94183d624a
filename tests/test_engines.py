"""The transformers engine behind the one interface: text and image prompts, batching, stops, token counts; the
one constructor, and the vLLM engines' arguments in vLLM's names (with a stand-in `vllm` module: no GPU here)."""

from __future__ import annotations

import sys
import types

import pytest
from PIL import Image

from firellava.engines import EngineSpec, Prompt, SamplingParams, build_engine

CPU = EngineSpec("transformers", {"device": "cpu", "dtype": "float32", "batch_size": 4})


@pytest.fixture(scope="module")
def llava_dir(tiny_llava, tmp_path_factory):
    from tests.llava_helpers import save_llava

    model, processor = tiny_llava
    return str(save_llava(model, processor, tmp_path_factory.mktemp("engine") / "llava"))


def image(colour):
    return Image.new("RGB", (50, 40), colour)


def test_batched_generation_equals_one_by_one(llava_dir):
    engine = build_engine(CPU, llava_dir)
    assert engine.model_name == llava_dir and engine.batch_size == 4
    prompts = [
        Prompt(
            messages=[
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color?"}]}
            ],
            images=[image((255, 0, 0))],
        ),
        Prompt(
            messages=[{"role": "user", "content": "<image>\nHow many shapes are in this image?"}],
            images=[image((0, 0, 255))],
        ),
        Prompt(text="<s>USER: <image>\nDescribe. ASSISTANT:", images=[image((0, 255, 0))]),
    ]
    params = SamplingParams(max_tokens=5)
    batched = engine.generate(prompts, params)
    single = [engine.generate([p], params)[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in single]
    image_tokens = engine.model.config.image_seq_length
    for g in batched:
        assert g.prompt_tokens > image_tokens
        assert 0 < g.completion_tokens <= 5 or g.finish_reason == "stop"
        assert g.finish_reason in ("stop", "length")


def test_text_only_model_refuses_images(toy_world):
    engine = build_engine(EngineSpec("transformers"), toy_world["models"]["llm"], "toy-llm")
    assert engine.model_name == "toy-llm" and engine.batch_size == 8
    out = engine.generate(
        [Prompt(text="a red circle")], SamplingParams(max_tokens=4, temperature=0.8, seed=3)
    )
    assert out[0].completion_tokens <= 4
    again = engine.generate(
        [Prompt(text="a red circle")], SamplingParams(max_tokens=4, temperature=0.8, seed=3)
    )
    assert again == out  # a seed makes sampling repeatable
    with pytest.raises(ValueError, match="text-only"):
        engine.generate([Prompt(text="<image>", images=[image((0, 0, 0))])], SamplingParams())


def test_unknown_backend_and_bad_prompt():
    with pytest.raises(ValueError, match="unknown engine backend 'nope'; known: transformers, openai, vllm"):
        EngineSpec("nope")
    with pytest.raises(ValueError, match="exactly one of messages or text"):
        Prompt()


@pytest.fixture
def fake_vllm(monkeypatch):
    """A stand-in `vllm` package recording the keyword arguments its engines are built with."""
    built: dict[str, dict] = {}

    class LLM:
        def __init__(self, **kwargs):
            built["LLM"] = kwargs

        def generate(self, inputs, sampling, use_tqdm=True):
            built["inputs"] = inputs
            done = types.SimpleNamespace(text="ok", token_ids=[7], finish_reason="stop")
            return [
                types.SimpleNamespace(prompt_token_ids=i["prompt_token_ids"], outputs=[done]) for i in inputs
            ]

    class VllmSamplingParams:
        def __init__(self, **kwargs):
            built["SamplingParams"] = kwargs

    class AsyncEngineArgs:
        def __init__(self, **kwargs):
            built["AsyncEngineArgs"] = kwargs

    class AsyncLLM:
        model_config = types.SimpleNamespace(max_model_len=512)

        @classmethod
        def from_engine_args(cls, args):
            return cls()

    modules = {
        "vllm": types.ModuleType("vllm"),
        "vllm.engine": types.ModuleType("vllm.engine"),
        "vllm.engine.arg_utils": types.ModuleType("vllm.engine.arg_utils"),
        "vllm.v1": types.ModuleType("vllm.v1"),
        "vllm.v1.engine": types.ModuleType("vllm.v1.engine"),
        "vllm.v1.engine.async_llm": types.ModuleType("vllm.v1.engine.async_llm"),
    }
    modules["vllm"].LLM = LLM
    modules["vllm"].SamplingParams = VllmSamplingParams
    modules["vllm.engine.arg_utils"].AsyncEngineArgs = AsyncEngineArgs
    modules["vllm.v1.engine.async_llm"].AsyncLLM = AsyncLLM
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return built


def test_vllm_engines_get_the_options_in_vllms_names(fake_vllm, llava_dir):
    from firellava.engines.vllm_engine import AsyncVLLMEngine

    options = {"batch_size": 16, "device": "cuda", "dtype": "bfloat16", "tensor_parallel_size": 1}
    engine = build_engine(EngineSpec("vllm", options), llava_dir, "firellava-13b")
    assert engine.model_name == "firellava-13b"
    vllm_names = {"max_num_seqs": 16, "dtype": "bfloat16", "tensor_parallel_size": 1}
    assert fake_vllm["LLM"] == {"model": llava_dir, **vllm_names}
    served = AsyncVLLMEngine(llava_dir, "tiny", max_images_per_prompt=2, **options)
    assert fake_vllm["AsyncEngineArgs"] == {
        "model": llava_dir,
        "limit_mm_per_prompt": {"image": 2},
        **vllm_names,
    }
    assert (served.model_name, served.max_model_len) == ("tiny", 512) and served.image_tokens > 0


def test_vllm_is_given_trainings_ids_never_text(fake_vllm, llava_dir):
    """A chat prompt reaches vLLM as the ids `prompt_ids` computes for the checkpoint's own rendering (one BOS,
    one placeholder per image that vLLM widens), with its images; vLLM never tokenizes text itself."""
    from transformers import AutoProcessor

    from firellava.core.chat_format import prompt_ids

    engine = build_engine(EngineSpec("vllm"), llava_dir)
    processor = AutoProcessor.from_pretrained(llava_dir)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}]
    picture = image((255, 0, 0))
    prompts = [Prompt(messages=messages, images=[picture]), Prompt(text="<s>USER: hi ASSISTANT:")]
    out = engine.generate(prompts, SamplingParams(max_tokens=2))
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    chat, text = fake_vllm["inputs"]
    assert chat == {
        "prompt_token_ids": prompt_ids(rendered, processor.tokenizer),
        "multi_modal_data": {"image": [picture]},
    }
    assert text == {"prompt_token_ids": prompt_ids("<s>USER: hi ASSISTANT:", processor.tokenizer)}
    assert chat["prompt_token_ids"].count(processor.tokenizer.bos_token_id) == 1
    assert out[0].prompt_token_ids == tuple(chat["prompt_token_ids"]) and out[0].token_ids == (7,)


def test_vllm_answer_text_reads_as_transformers_decodes_it(llama_tokenizer):
    """vLLM detokenizes an answer in its prompt's context, where the `▁` starting `▁The` is a space; the
    transformers engine decodes the answer's ids alone, where Llama's decoder drops it. The vLLM adapters render
    the transformers engine's text; a byte-level BPE keeps the space either way, so nothing is cut there."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from firellava.engines.vllm_engine import answer_text, drops_leading_boundary

    text = "USER: What is it? ASSISTANT:"
    prompt = llama_tokenizer(text, add_special_tokens=False)["input_ids"]
    whole = llama_tokenizer(text + " The  red circle.", add_special_tokens=False)["input_ids"]
    assert whole[: len(prompt)] == prompt
    answer = whole[len(prompt) :]
    in_context = llama_tokenizer.decode(prompt + answer)[len(llama_tokenizer.decode(prompt)) :]
    alone = llama_tokenizer.decode(answer)
    assert in_context == " " + alone and alone.startswith("The")
    assert drops_leading_boundary(llama_tokenizer)
    assert answer_text(in_context, True, True) == alone
    assert answer_text(" red", False, True) == " red"  # only an answer's first piece

    byte_level = Tokenizer(models.BPE())
    byte_level.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    byte_level.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_level.train_from_iterator(["x x y"], trainers.BpeTrainer(initial_alphabet=alphabet))
    assert not drops_leading_boundary(PreTrainedTokenizerFast(tokenizer_object=byte_level))
