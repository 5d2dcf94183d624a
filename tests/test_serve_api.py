"""The built-in server, started for real on loopback and called with the official `openai` client."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import httpx
import openai
import pytest
from PIL import Image

from firellava.engines import EngineSpec, Prompt, SamplingParams, build_engine
from firellava.serve.process import ServerProcess
from firellava.serve.settings import FetchPolicy, Limits, ServerSettings
from tests.serve_helpers import ImageServer, png

KEY = "test-key"
NAME = "tiny-llava"
RED, BLUE = (255, 0, 0), (0, 0, 255)


def uri(colour) -> str:
    return "data:image/png;base64," + base64.b64encode(png(colour)).decode()


def pil(colour) -> Image.Image:
    return Image.new("RGB", (40, 30), colour)


def user(text: str, *urls: str) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": u, "detail": "low"}} for u in urls]
    return {"role": "user", "content": parts + [{"type": "text", "text": text}]}


@pytest.fixture(scope="module")
def llava_dir(tiny_llava, tmp_path_factory):
    from tests.llava_helpers import save_llava

    model, processor = tiny_llava
    return str(save_llava(model, processor, tmp_path_factory.mktemp("serve") / "llava"))


@pytest.fixture(scope="module")
def images():
    with ImageServer() as allowed, ImageServer("127.0.0.2") as hidden:
        yield allowed, hidden


@pytest.fixture(scope="module")
def server(llava_dir, images):
    settings = ServerSettings(
        model=llava_dir,
        model_name=NAME,
        port=0,
        api_key=KEY,
        engine=EngineSpec("transformers", {"batch_size": 4}),
        # Only the test image server's exact address is allowed; 127.0.0.2 stays under the default refusal.
        fetch=FetchPolicy(allow_networks=("127.0.0.1/32",)),
        limits=Limits(max_request_bytes=2_000_000, default_temperature=0.0, max_pending_requests=4),
        log_level="warning",
    )
    with ServerProcess(settings, start_timeout_s=120) as srv:
        yield srv
        print("---- server log (tail) ----\n" + srv.log_tail())  # shown by pytest when a test failed


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def local(llava_dir):
    """The same checkpoint in-process: what the server must reproduce under greedy decoding."""
    return build_engine(EngineSpec("transformers"), llava_dir)


GREEDY = SamplingParams(max_tokens=8, temperature=0.0)


def in_process(local, messages, *colours):
    return local.generate([Prompt(messages=messages, images=[pil(c) for c in colours])], GREEDY)[0]


def chat(client, messages, **kw):
    return client.chat.completions.create(model=NAME, messages=messages, max_tokens=8, temperature=0, **kw)


def as_template(messages):
    """The same conversation with {"type": "image"} parts, as the in-process engine takes it."""
    out = []
    for m in messages:
        if isinstance(m["content"], list):
            parts = [p if p["type"] == "text" else {"type": "image"} for p in m["content"]]
            out.append({**m, "content": parts})
        else:
            out.append(m)
    return out


def test_models_and_health(server, client):
    assert httpx.get(server.base_url + "/health").json() == {"status": "ok"}
    assert [m.id for m in client.models.list().data] == [NAME]


def test_chat_with_base64_image_equals_in_process(client, local):
    messages = [user("What color is the shape?", uri(RED))]
    reply = chat(client, messages)
    expected = in_process(local, as_template(messages), RED)
    assert reply.choices[0].message.content == expected.text
    assert reply.usage.prompt_tokens == expected.prompt_tokens
    # usage counts the image as the model's real number of image tokens
    assert reply.usage.prompt_tokens > local.model.config.image_seq_length
    assert reply.usage.completion_tokens == expected.completion_tokens
    assert reply.choices[0].finish_reason == expected.finish_reason


def test_token_ids_on_request_are_trainings(client, local, llava_dir):
    """vLLM's `return_token_ids` extension: the ids the model was fed are the ids training computes for the same
    conversation (the image widened to its placeholders), and the generated ids decode to the answer."""
    from tests.llava_helpers import training_prompt_ids

    config = local.model.config
    first = [user("What color is the shape?", uri(RED))]
    multi = [*first, {"role": "assistant", "content": "It is red."}, user("Are you  sure?\nSay it.")]
    for messages in (first, multi, [user("How many objects?")]):
        reply = chat(client, messages, extra_body={"return_token_ids": True}).model_dump()
        want = training_prompt_ids(
            as_template(messages), local.tokenizer, config.image_token_id, config.image_seq_length
        )
        assert reply["prompt_token_ids"] == want
        assert reply["usage"]["prompt_tokens"] == len(want)
        generated = reply["choices"][0]["token_ids"]
        assert len(generated) == reply["usage"]["completion_tokens"]
        assert (
            local.tokenizer.decode(generated, skip_special_tokens=True)
            == reply["choices"][0]["message"]["content"]
        )
    plain = chat(client, first).model_dump()
    assert plain.get("prompt_token_ids") is None and plain["choices"][0].get("token_ids") is None
    completion = client.completions.create(
        model=NAME,
        prompt="<s>USER: <image>\nWhat color? ASSISTANT:",
        max_tokens=4,
        extra_body={"images": [uri(BLUE)], "return_token_ids": True},
    ).model_dump()
    assert completion["choices"][0]["prompt_token_ids"][0] == local.tokenizer.bos_token_id
    assert (
        completion["choices"][0]["prompt_token_ids"].count(config.image_token_id) == config.image_seq_length
    )
    with pytest.raises(openai.BadRequestError, match="return_token_ids"):
        chat(client, first, stream=True, extra_body={"return_token_ids": True})


def test_chat_with_image_url_from_allowed_server(client, images):
    allowed, _ = images
    by_url = chat(client, [user("Describe.", allowed.url + "/blue.png")])
    by_data = chat(client, [user("Describe.", uri(BLUE))])
    assert by_url.choices[0].message.content == by_data.choices[0].message.content
    assert ("/blue.png", "firellava-serve/0.1 (+https://github.com/firellava)") in allowed.hits


def test_streaming_with_usage(client):
    messages = [user("What shapes?", uri(RED))]
    whole = chat(client, messages)
    chunks = list(chat(client, messages, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_ends_with_done(server):
    body = {"model": NAME, "messages": [user("Hi", uri(RED))], "max_tokens": 4, "stream": True}
    with httpx.stream(
        "POST",
        server.base_url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {KEY}"},
    ) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)


def test_completions_with_images(client, local):
    prompt = "<s>USER: <image>\nWhat color? ASSISTANT:"
    reply = client.completions.create(
        model=NAME, prompt=prompt, max_tokens=8, temperature=0, extra_body={"images": [uri(BLUE)]}
    )
    expected = local.generate([Prompt(text=prompt, images=[pil(BLUE)])], GREEDY)[0]
    assert reply.choices[0].text == expected.text
    assert reply.usage.prompt_tokens == expected.prompt_tokens


def test_system_override_and_empty_system(client, local):
    question = user("What is this?", uri(RED))
    counts = {}
    for label, system in (("default", None), ("custom", "You answer in one word."), ("empty", "")):
        messages = ([] if system is None else [{"role": "system", "content": system}]) + [question]
        reply = chat(client, messages)
        expected = in_process(local, as_template(messages), RED)
        assert reply.choices[0].message.content == expected.text, label
        assert reply.usage.prompt_tokens == expected.prompt_tokens, label
        counts[label] = reply.usage.prompt_tokens
    assert counts["default"] > counts["custom"] > counts["empty"]


def test_several_images_keep_the_last_by_default(client):
    two = chat(client, [user("Which color?", uri(RED), uri(BLUE))])
    last = chat(client, [user("Which color?", uri(BLUE))])
    assert two.choices[0].message.content == last.choices[0].message.content
    assert two.usage.prompt_tokens == last.usage.prompt_tokens


def test_openai_engine_against_the_server(server, local):
    options = {"base_url": server.base_url, "api_key": KEY, "concurrency": 4}
    remote = build_engine(EngineSpec("openai", options), NAME)
    prompts = [
        Prompt(messages=[{"role": "user", "content": "<image>\nHow many shapes?"}], images=[pil(RED)]),
        Prompt(
            messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Color?"}]}],
            images=[pil(BLUE)],
        ),
        Prompt(text="<s>USER: <image>\nDescribe. ASSISTANT:", images=[pil((0, 255, 0))]),
        Prompt(text="a red circle"),
    ]
    # a remote API reports no token ids: the answers and their counts are compared
    expected = [replace(g, prompt_token_ids=(), token_ids=()) for g in local.generate(prompts, GREEDY)]
    assert remote.generate(prompts, GREEDY) == expected


# ----------------------------------------------------------------------------------------------- errors


def post(server, body=None, *, path="/v1/chat/completions", key=KEY, raw=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if raw is not None:
        resp = httpx.post(server.base_url + path, content=raw, headers=headers, timeout=30)
    else:
        resp = httpx.post(server.base_url + path, json=body, headers=headers, timeout=30)
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and "Traceback" not in resp.text
    return resp.status_code, err


def body(*urls, **kw):
    return {"model": NAME, "messages": [user("What?", *urls)], "max_tokens": 4, **kw}


def test_malformed_requests_get_openai_errors(server, images):
    allowed, _ = images
    cases = [
        (dict(raw=b'{"model": "x", "messages": ['), 400, "invalid_json"),
        (dict(body=body("data:image/png;base64,@@@@")), 400, "invalid_image"),
        (
            dict(body=body("data:text/plain;base64," + base64.b64encode(b"hello").decode())),
            400,
            "invalid_image",
        ),
        (dict(body=body(allowed.url + "/text")), 400, "invalid_image"),
        (dict(body=body(allowed.url + "/missing")), 422, "image_fetch_failed"),
        (dict(body=body(allowed.url + "/big")), 413, "image_too_large"),
        (dict(body=body(allowed.url + "/slow.png")), 422, "image_fetch_timeout"),
        (dict(body=body(*[uri(RED)] * 31)), 400, "too_many_images"),
        (dict(body=body(uri(RED)) | {"model": "gpt-4o"}), 404, "model_not_found"),
        (dict(body=body(uri(RED)), key=None), 401, "invalid_api_key"),
        (dict(body=body(uri(RED)), key="wrong"), 401, "invalid_api_key"),
        (dict(body=body(uri(RED), temperature=5)), 400, "invalid_value"),
        (dict(body=body(uri(RED), n=2)), 400, "invalid_value"),
        (
            dict(body={"model": NAME, "messages": [{"role": "user", "content": "<image> hi"}]}),
            400,
            "invalid_messages",
        ),
        (
            dict(body={"model": NAME, "messages": [{"role": "assistant", "content": "hi"}]}),
            400,
            "invalid_messages",
        ),
        (dict(body={"model": NAME, "messages": [{"role": "robot", "content": "hi"}]}), 400, "invalid_value"),
        (dict(raw=json.dumps(body(uri(RED)) | {"pad": "x" * 2_100_000}).encode()), 413, "request_too_large"),
        (
            dict(
                body={"model": NAME, "prompt": "<image> <image>", "images": [uri(RED)]},
                path="/v1/completions",
            ),
            400,
            "image_count_mismatch",
        ),
        (dict(body={}, path="/v1/nothing"), 404, "not_found"),
    ]
    for kwargs, status, code in cases:
        got_status, err = post(server, **kwargs)
        assert (got_status, err["code"]) == (status, code), (kwargs.get("path"), code, err)
    _, err = post(server, body(uri(RED), temperature=5))
    assert err["param"] == "temperature"


def healthy(server) -> bool:
    return httpx.get(server.base_url + "/health", timeout=30).status_code == 200


def nested(depth: int, leaf=1):
    for i in range(depth):
        leaf = {"a": leaf} if i % 2 else [leaf]
    return leaf


def test_deeply_nested_json_is_a_400(server):
    deep = [b'{"a":' * 5000, b'{"a":' * 5000 + b"1" + b"}" * 5000, b"[" * 100_000 + b"]" * 100_000]
    for path in ("/v1/chat/completions", "/v1/completions"):
        for raw in deep:
            status, err = post(server, raw=raw, path=path)
            assert (status, err["type"], err["code"], err["param"]) == (
                400,
                "invalid_request_error",
                "invalid_json",
                None,
            ), (path, raw[:12], err)
            assert "128 levels" in err["message"]
    assert healthy(server)
    # Nesting within the cap is still JSON: an ignored field nested 100 levels deep does not stop the request.
    reply = httpx.post(
        server.base_url + "/v1/chat/completions",
        json=body(uri(RED)) | {"metadata": nested(100)},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text


def test_nesting_check_is_exact_on_json():
    from firellava.serve.body import nests_deeper

    samples = [nested(d) for d in range(0, 40, 3)] + [
        {"s": "[[[{{{", "t": ['\\"[', {"u": [[], [[]], {"v": [[[1]]]}]}]},
        [[[]] * 50] * 50,
        {"k[": ["]]]"], "m": [[["x"]]]},
    ]

    def depth(o) -> int:
        kids = o.values() if isinstance(o, dict) else o if isinstance(o, list) else None
        return 0 if kids is None else 1 + max(map(depth, kids), default=0)

    for o in samples:
        text, d = json.dumps(o), depth(o)
        assert [nests_deeper(text, k) for k in range(d + 2)] == [True] * d + [False, False], text[:60]


def test_non_json_types_are_refused_by_field(server):
    """OpenAI checks JSON types: a string or number is no boolean, a decimal no integer (no coercion)."""
    cases = [
        ({"stream": "yes"}, "stream"),
        ({"stream": 1}, "stream"),
        ({"stream": "true"}, "stream"),
        ({"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
        ({"logprobs": "false"}, "logprobs"),
        ({"max_tokens": 4.0}, "max_tokens"),
        ({"max_tokens": "4"}, "max_tokens"),
        ({"temperature": "0"}, "temperature"),
        ({"temperature": True}, "temperature"),
    ]
    for fields, param in cases:
        for path, request in (
            ("/v1/chat/completions", body(uri(RED))),
            ("/v1/completions", {"model": NAME, "prompt": "hi", "max_tokens": 4}),
        ):
            status, err = post(server, request | fields, path=path)
            assert (status, err["type"], err["code"], err["param"]) == (
                400,
                "invalid_request_error",
                "invalid_value",
                param,
            ), (path, fields, err)
    assert healthy(server)
    # what OpenAI accepts still passes: real booleans, and integers where a number is expected
    for fields in ({"stream": False, "temperature": 0, "top_p": 1}, {"temperature": 1, "logprobs": False}):
        reply = httpx.post(
            server.base_url + "/v1/chat/completions",
            json=body(uri(RED)) | fields,
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=60,
        )
        assert reply.status_code == 200 and reply.json()["object"] == "chat.completion", reply.text


def test_openai_client_raises_typed_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[user("x", uri(RED))])
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=NAME, messages=[user("x", "data:image/png;base64,!!")])
    assert info.value.body["param"] == "messages.0.content.0.image_url"


def test_loopback_url_refused_and_never_contacted(server, images):
    allowed, hidden = images
    for url in (
        hidden.url + "/red.png",
        f"{allowed.url}/redirect?to={hidden.url}/red.png",
        "http://[::1]:9/x.png",
    ):
        status, err = post(server, body(url))
        assert (status, err["code"]) == (400, "image_url_forbidden"), url
    assert hidden.hits == []


def test_queue_full_gets_429(server, images):
    allowed, _ = images
    slow = body(allowed.url + "/slow.png")  # each holds a slot for the 1.5 s fetch limit
    with ThreadPoolExecutor(8) as pool:
        statuses = sorted(s for s, _ in pool.map(lambda _: post(server, slow), range(8)))
    assert statuses.count(429) >= 1 and statuses.count(422) >= 1
    assert set(statuses) == {422, 429}
