"""Image inputs without a model: data URIs, decoding limits, and the SSRF rules under the default policy."""

from __future__ import annotations

import asyncio
import base64
import io
import ipaddress

import pytest
from PIL import Image

from firellava.serve.errors import APIError
from firellava.serve.images import decode_data_uri, forbidden_reason, load_image, make_client, open_image
from firellava.serve.settings import FetchPolicy
from tests.serve_helpers import ImageServer, png

DEFAULT = FetchPolicy()


def load(url: str, policy: FetchPolicy = DEFAULT) -> Image.Image:
    async def go():
        async with make_client() as client:
            return await load_image(url, "image_url", policy, client)

    return asyncio.run(go())


def error_of(url: str, policy: FetchPolicy = DEFAULT) -> APIError:
    with pytest.raises(APIError) as info:
        load(url, policy)
    return info.value


@pytest.mark.parametrize(
    "address, reason",
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("::ffff:127.0.0.1", "loopback"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_forbidden_addresses(address, reason):
    assert forbidden_reason(ipaddress.ip_address(address)) == reason


def test_default_policy_refuses_loopback_without_connecting():
    with ImageServer() as server:
        for url in (server.url + "/red.png", server.url.replace("127.0.0.1", "localhost") + "/red.png"):
            err = error_of(url)
            assert (err.status, err.code) == (400, "image_url_forbidden")
        assert server.hits == []
        allowed = FetchPolicy(allow_networks=("127.0.0.0/8", "::1/128"))
        assert load(server.url + "/red.png", allowed).getpixel((0, 0)) == (255, 0, 0)
        assert len(server.hits) == 1


def test_redirect_hops_are_checked():
    with ImageServer() as allowed, ImageServer("127.0.0.2") as hidden:
        policy = FetchPolicy(allow_networks=("127.0.0.1/32",))
        err = error_of(f"{allowed.url}/redirect?to={hidden.url}/red.png", policy)
        assert err.code == "image_url_forbidden"
        assert hidden.hits == []
        ok = load(f"{allowed.url}/redirect?to=/blue.png", policy)
        assert ok.getpixel((0, 0)) == (0, 0, 255)


def test_size_time_and_status_limits():
    with ImageServer() as server:
        policy = FetchPolicy(allow_networks=("127.0.0.1/32",))
        assert (
            error_of(server.url + "/big", policy).status == 413
        )  # no Content-Length: counted while streaming
        slow = error_of(
            server.url + "/slow.png", FetchPolicy(allow_networks=("127.0.0.1/32",), timeout_s=0.5)
        )
        assert (slow.status, slow.code) == (422, "image_fetch_timeout")
        assert error_of(server.url + "/missing", policy).status == 422
        assert error_of(server.url + "/text", policy).code == "invalid_image"
    assert error_of("file:///etc/passwd").code == "invalid_image_url"


def test_data_uris_and_decoding():
    uri = "data:image/png;base64," + base64.b64encode(png((0, 255, 0))).decode()
    assert load(uri).getpixel((1, 1)) == (0, 255, 0)
    for bad in ("data:image/png;base64,%%%notbase64", "data:image/png,rawbytes", "data:image/png;base64"):
        with pytest.raises(APIError) as info:
            decode_data_uri(bad, "p")
        assert info.value.status == 400
    gif = io.BytesIO()
    Image.new("P", (8, 8)).save(gif, format="GIF")
    assert open_image(gif.getvalue(), "p", DEFAULT).mode == "RGB"
    ico = io.BytesIO()
    Image.new("RGB", (16, 16)).save(ico, format="ICO")
    with pytest.raises(APIError, match="format ICO not supported"):
        open_image(ico.getvalue(), "p", DEFAULT)
    bomb = io.BytesIO()
    Image.new("1", (8000, 8000)).save(bomb, format="PNG")  # 64 Mpx in a few kB
    assert len(bomb.getvalue()) < 100_000
    with pytest.raises(APIError, match="exceeds the limit"):
        open_image(bomb.getvalue(), "p", DEFAULT)
