"""Image inputs: `data:` base64 URIs and http(s) URLs, fetched under the SSRF rules and the size/time limits.

SSRF rules: the host is resolved first and every address it resolves to must be public (or inside the configured
allow-list); the connection then goes to that checked address (so a second DNS answer cannot swap it), and every
redirect hop is checked the same way. Sizes are enforced while the body streams in, not after.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import socket
import warnings
from urllib.parse import urljoin

import httpx
from PIL import Image, UnidentifiedImageError

from firellava.serve.body import read_capped
from firellava.serve.errors import APIError
from firellava.serve.settings import FetchPolicy

_REDIRECTS = (301, 302, 303, 307, 308)


def forbidden_reason(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address may not be fetched by default, or None for a public address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for reason in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(ip, f"is_{reason}"):
            return reason.replace("_", "-")
    if not ip.is_global:
        return "non-global"
    return None


def check_address(address: str, policy: FetchPolicy) -> None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    reason = forbidden_reason(ip)
    if reason and not any(ip in net for net in policy.networks()):
        raise PermissionError(f"{reason} address {ip}")


async def resolve_checked(host: str, port: int, policy: FetchPolicy) -> str:
    """The address to connect to; refuses the host if ANY address it resolves to is forbidden."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    for address in addresses:
        check_address(address, policy)
    return addresses[0]


def decode_data_uri(uri: str, param: str) -> bytes:
    """RFC 2397 `data:[<mediatype>][;param]*;base64,<data>`; only base64 payloads are images."""
    header, sep, payload = uri.partition(",")
    if not sep:
        raise APIError(400, f"{param}: malformed data URI (no ',')", param=param, code="invalid_image")
    if not header.lower().endswith(";base64"):
        raise APIError(
            400, f"{param}: only base64 data URIs are supported", param=param, code="invalid_image"
        )
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise APIError(
            400, f"{param}: invalid base64 in data URI", param=param, code="invalid_image"
        ) from None


async def fetch_url(url: str, param: str, policy: FetchPolicy, client: httpx.AsyncClient) -> bytes:
    try:
        return await asyncio.wait_for(_fetch(url, param, policy, client), policy.timeout_s)
    except asyncio.TimeoutError:
        raise APIError(
            422,
            f"{param}: image not fetched within {policy.timeout_s}s",
            param=param,
            code="image_fetch_timeout",
        ) from None


async def _fetch(url: str, param: str, policy: FetchPolicy, client: httpx.AsyncClient) -> bytes:
    for _ in range(policy.max_redirects + 1):
        try:
            target = httpx.URL(url)
        except (httpx.InvalidURL, ValueError) as e:
            raise APIError(400, f"{param}: invalid URL: {e}", param=param, code="invalid_image_url") from None
        if target.scheme not in ("http", "https") or not target.host:
            raise APIError(
                400,
                f"{param}: only http(s) and data: URLs are supported",
                param=param,
                code="invalid_image_url",
            )
        port = target.port or (443 if target.scheme == "https" else 80)
        try:
            address = await resolve_checked(target.host, port, policy)
        except PermissionError as e:
            raise APIError(
                400,
                f"{param}: image URL host {target.host!r} is not allowed ({e})",
                param=param,
                code="image_url_forbidden",
            ) from None
        except OSError as e:
            raise APIError(
                422, f"{param}: cannot resolve {target.host!r}: {e}", param=param, code="image_fetch_failed"
            ) from None
        pinned = target.copy_with(host=address)
        headers = {
            "Host": target.netloc.decode("ascii"),
            "User-Agent": policy.user_agent,
            "Accept-Encoding": "identity",
        }
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        try:
            async with client.stream("GET", pinned, headers=headers, extensions=extensions) as resp:
                if resp.status_code in _REDIRECTS and "location" in resp.headers:
                    url = urljoin(str(target), resp.headers["location"])
                    continue
                if resp.status_code != 200:
                    raise APIError(
                        422,
                        f"{param}: image URL answered HTTP {resp.status_code}",
                        param=param,
                        code="image_fetch_failed",
                    )
                return await _read_capped(resp, param, policy.max_image_bytes)
        except httpx.HTTPError as e:
            raise APIError(
                422, f"{param}: image fetch failed: {e}", param=param, code="image_fetch_failed"
            ) from None
    raise APIError(
        422, f"{param}: more than {policy.max_redirects} redirects", param=param, code="image_fetch_failed"
    )


async def _read_capped(resp: httpx.Response, param: str, limit: int) -> bytes:
    too_big = APIError(413, f"{param}: image larger than {limit} bytes", param=param, code="image_too_large")
    return await read_capped(resp.aiter_raw(), resp.headers.get("content-length"), limit, too_big)


def open_image(data: bytes, param: str, policy: FetchPolicy) -> Image.Image:
    """Decode one image as RGB; refuses unknown formats and decompression bombs before decoding pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in policy.formats:
                raise APIError(
                    400,
                    f"{param}: image format {img.format} not supported; use one of {', '.join(policy.formats)}",
                    param=param,
                    code="invalid_image_format",
                )
            width, height = img.size
            if width * height > policy.max_image_pixels:
                raise APIError(
                    400,
                    f"{param}: image of {width}x{height} pixels exceeds the limit",
                    param=param,
                    code="image_too_large",
                )
            img.seek(0)  # animated GIF/TIFF: the first frame
            img.load()
            return img.convert("RGB")
    except APIError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise APIError(
            400, f"{param}: decompression bomb refused", param=param, code="image_too_large"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        raise APIError(
            400, f"{param}: not a readable image ({type(e).__name__})", param=param, code="invalid_image"
        ) from None


async def load_image(url: str, param: str, policy: FetchPolicy, client: httpx.AsyncClient) -> Image.Image:
    if url.startswith("data:"):
        data = decode_data_uri(url, param)
    else:
        data = await fetch_url(url, param, policy, client)
    return await asyncio.to_thread(open_image, data, param, policy)


def make_client() -> httpx.AsyncClient:
    # trust_env=False: an HTTP(S)_PROXY from the environment would connect on our behalf and skip the address check.
    return httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=httpx.Timeout(30.0))
