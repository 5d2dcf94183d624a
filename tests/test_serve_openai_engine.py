"""The engine interface's OpenAI-compatible backend: request shapes, retries with backoff, clear failures."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from firellava.engines import EngineSpec, Prompt, SamplingParams, build_engine
from firellava.engines.openai_engine import OpenAIEngineError


class FlakyEndpoint:
    """Answers 503 (with Retry-After: 0) `failures` times per path, then a completion; 400 for model 'bad'."""

    def __init__(self, failures: int) -> None:
        self.bodies: list[tuple[str, dict]] = []
        self.failures = failures
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.bodies.append((self.path, body))
                if body["model"] == "bad":
                    return self._json(
                        400, {"error": {"message": "no such thing", "type": "x", "param": None, "code": None}}
                    )
                if sum(p == self.path for p, _ in owner.bodies) <= owner.failures:
                    return self._json(503, {"error": {"message": "busy"}}, retry_after="0")
                usage = {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
                if self.path.endswith("/chat/completions"):
                    choice = {
                        "index": 0,
                        "message": {"role": "assistant", "content": "a cat"},
                        "finish_reason": "stop",
                    }
                else:
                    choice = {"index": 0, "text": "a dog", "finish_reason": "length"}
                self._json(200, {"choices": [choice], "usage": usage})

            def _json(self, status, obj, retry_after=None):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_requests_retries_and_failures():
    endpoint = FlakyEndpoint(failures=2)
    try:
        options = {"base_url": endpoint.url, "served_model": "toy", "backoff_s": 0.01}
        engine = build_engine(EngineSpec("openai", options), "/ckpt/toy")
        red = Image.new("RGB", (8, 8), (255, 0, 0))
        prompts = [
            Prompt(
                messages=[{"role": "system", "content": ""}, {"role": "user", "content": "<image>\nWhat?"}],
                images=[red],
            ),
            Prompt(text="USER: <image>\nWhat? ASSISTANT:", images=[red]),
        ]
        params = SamplingParams(max_tokens=5, temperature=0.0, stop=("###",), seed=3)
        out = engine.generate(prompts, params)
        assert [(g.text, g.finish_reason, g.prompt_tokens) for g in out] == [
            ("a cat", "stop", 7),
            ("a dog", "length", 7),
        ]
        done = {path: body for path, body in endpoint.bodies}
        chat, completion = done["/v1/chat/completions"], done["/v1/completions"]
        assert len(endpoint.bodies) == 6  # two 503s per request, then success
        assert (
            chat["model"] == "toy"
            and chat["stop"] == ["###"]
            and chat["seed"] == 3
            and chat["max_tokens"] == 5
        )
        user = chat["messages"][1]["content"]
        assert user[0]["image_url"]["url"].startswith("data:image/png;base64,") and user[1] == {
            "type": "text",
            "text": "What?",
        }
        assert chat["messages"][0] == {"role": "system", "content": ""}
        assert completion["prompt"] == prompts[1].text and len(completion["images"]) == 1

        with pytest.raises(OpenAIEngineError, match="refused it: HTTP 400: no such thing"):
            build_engine(EngineSpec("openai", {"base_url": endpoint.url}), "bad").generate(
                [Prompt(text="x")], params
            )
        options = {"base_url": endpoint.url, "max_retries": 1, "backoff_s": 0.01}
        stubborn = build_engine(EngineSpec("openai", options), "toy")
        endpoint.failures = 100
        with pytest.raises(OpenAIEngineError, match="failed 2 times: HTTP 503"):
            stubborn.generate([Prompt(text="y")], params)
        with pytest.raises(ValueError, match="more image slots than images"):
            engine.generate(
                [Prompt(messages=[{"role": "user", "content": "<image><image>"}], images=[red])], params
            )
    finally:
        endpoint.close()
