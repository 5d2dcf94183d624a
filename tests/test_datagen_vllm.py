"""The vLLM backend on a GPU, with random weights (`load_format="dummy"`): a tiny Llama config plus the toy
tokenizer, so nothing is downloaded. Chat prompts get one BOS, `max_tokens` is honoured, order is kept."""

from __future__ import annotations

import pytest

from firellava.datagen.prompts import TOY
from firellava.engines import EngineSpec, Prompt, SamplingParams, build_engine
from firellava.toy.teacher import LLAMA2_CHAT_TEMPLATE

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def dummy_teacher(toy_world, tmp_path_factory):
    from transformers import AutoTokenizer, LlamaConfig

    out = tmp_path_factory.mktemp("vllm") / "teacher"
    tok = AutoTokenizer.from_pretrained(toy_world["models"]["tokenizer"])
    tok.chat_template = LLAMA2_CHAT_TEMPLATE
    tok.save_pretrained(out)
    LlamaConfig(
        vocab_size=len(tok),
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        torch_dtype="bfloat16",
    ).save_pretrained(out)
    return out, tok


def test_vllm_engine_with_dummy_weights(dummy_teacher):
    path, tok = dummy_teacher
    pytest.importorskip("vllm")
    options = {
        "tensor_parallel_size": 1,
        "load_format": "dummy",
        "gpu_memory_utilization": 0.3,
        "max_model_len": 1024,
        "enforce_eager": True,
        "batch_size": 8,  # vLLM's max_num_seqs: the project's option name goes through the one translation
    }
    engine = build_engine(EngineSpec("vllm", options), str(path))
    chats = [
        Prompt(messages=TOY.messages("detail", f"A red circle.\n\ncircle: [0.{i}00, 0.1, 0.5, 0.5]"))
        for i in range(3)
    ]
    text = "<s>[INST] hello [/INST]"
    gens = engine.generate([*chats, Prompt(text=text)], SamplingParams(max_tokens=7, temperature=0.0, seed=0))
    assert len(gens) == 4
    for prompt, g in zip(chats, gens):
        ids = tok.apply_chat_template(list(prompt.messages), add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        assert g.prompt_tokens == len(ids)  # the template's BOS only
        assert g.completion_tokens <= 7 and g.finish_reason in ("stop", "length")
    assert gens[3].prompt_tokens == len(tok(text, add_special_tokens=False)["input_ids"])
    assert any(g.finish_reason == "length" for g in gens)
