"""What the project hands vLLM, checked without vLLM: engine arguments on CPU and GPU, the environment every vLLM
start gets, and a chat template that vLLM's server can test-render without special tokens."""

from __future__ import annotations

from jinja2.sandbox import ImmutableSandboxedEnvironment

from firellava.core.chat_format import CHAT_TEMPLATE
from firellava.engines.vllm_engine import engine_args, vllm_environment

SPEC = {
    "tensor_parallel_size": 2,
    "gpu_memory_utilization": 0.9,
    "cpu_kv_cache_bytes": 1 << 30,
    "dtype": "bfloat16",
    "batch_size": 8,
    "device": "cpu",
}


def test_engine_args_keep_the_gpu_settings():
    assert engine_args(SPEC) == {
        "tensor_parallel_size": 2,
        "gpu_memory_utilization": 0.9,
        "dtype": "bfloat16",
        "max_num_seqs": 8,
    }


def test_engine_args_on_cpu_size_the_kv_cache_in_bytes():
    assert engine_args(SPEC, cpu=True) == {
        "kv_cache_memory_bytes": 1 << 30,
        "dtype": "bfloat16",
        "max_num_seqs": 8,
        "enforce_eager": True,
        "enable_chunked_prefill": False,
    }
    assert engine_args({**SPEC, "enforce_eager": False}, cpu=True)["enforce_eager"] is False


def test_environment_never_phones_home():
    env = vllm_environment({"DO_NOT_TRACK": "0", "VLLM_HOST_IP": "10.0.0.5"})
    assert env["VLLM_NO_USAGE_STATS"] == env["DO_NOT_TRACK"] == "1"
    assert env["VLLM_HOST_IP"] == "10.0.0.5"  # a multi-node run sets its own
    assert vllm_environment({})["VLLM_HOST_IP"] == "127.0.0.1"


def test_template_renders_without_special_tokens():
    """vLLM's server renders the template once without bos_token/eos_token to detect its content format."""
    template = ImmutableSandboxedEnvironment().from_string(CHAT_TEMPLATE)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    text = template.render(messages=messages, add_generation_prompt=True)
    assert text.endswith("USER: <image>\nHi ASSISTANT:")
