"""The endpoint the API teacher talks to: its configuration, and an openai client for it and nothing else.

`is_local_endpoint` decides, from the URL text alone, whether images under a credentialed-access agreement
may be sent; `open_client` builds the transport (the official ``openai`` client, with retries off: the
teacher runs its own loop, see `chexreason.teachers.api.ApiTeacher._chat`).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
from openai import OpenAI

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_local_endpoint(url: str) -> bool:
    """True when the URL's host is this machine's loopback: ``localhost``, 127.0.0.0/8 or ``::1``.

    Decided from the URL text alone, resolving nothing, so that a refusal can never itself reach the
    network. Deliberately strict: ``0.0.0.0`` (the *unspecified* address: a listen address, which some
    systems but not all route to this machine), private addresses such as 10.0.0.5 (another machine, even
    on your own network) and names that merely look local (``foo.localhost``, ``127.0.0.1.nip.io``) are not
    local.

    >>> [is_local_endpoint(u) for u in ("http://localhost:8000/v1", "http://127.1.2.3/v1", "http://[::1]:11434/v1")]
    [True, True, True]
    >>> [is_local_endpoint(u) for u in ("http://0.0.0.0:8000/v1", "http://10.0.0.5/v1", "https://example.com/v1")]
    [False, False, False]
    """
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


@dataclass(frozen=True)
class ApiTeacherConfig:
    """Where to send requests and how hard to try.

    Attributes:
        base_url: the API root, e.g. ``http://localhost:8000/v1`` (vLLM), ``http://localhost:11434/v1``
            (Ollama) or ``https://generativelanguage.googleapis.com/v1beta/openai`` (Gemini).
        model: the model name the server expects.
        cache_path: the JSONL cache (created on first use). One file may hold several models and formats.
        api_key_env: the *name* of the environment variable holding the key; None, or a variable that is
            unset, sends no Authorization header (local servers).
        max_concurrency: requests in flight at once.
        max_retries: retries of one request after a connection error, timeout, 408, 429 or 5xx.
        timeout_s: seconds allowed for each HTTP request (connect, write, read).
        temperature: sampling temperature; keep it above 0 if mismatches are to be regenerated.
        max_tokens: the most tokens the teacher may write per trace.
        regenerate_mismatches: extra attempts when a trace is malformed or its labels are not the ground truth.
        max_image_side: images larger than this on either side are downscaled (aspect kept) before sending:
            the served models resize far below chest X-ray resolution anyway, and a full-size PNG can exceed
            request-size limits. None sends the image as is.
        allow_credentialed_remote: acknowledge that credentialed images (MIMIC-CXR, CheXpert) may go to a
            non-local endpoint. Their data use agreements forbid third-party online services; set this only
            for a server under your own control that the agreement covers.
    """

    base_url: str
    model: str
    cache_path: Path | str
    api_key_env: str | None = None
    max_concurrency: int = 4
    max_retries: int = 5
    timeout_s: float = 60.0
    temperature: float = 0.7
    max_tokens: int = 1024
    regenerate_mismatches: int = 1
    max_image_side: int | None = 1024
    allow_credentialed_remote: bool = False

    def __post_init__(self) -> None:
        _check_base_url(self.base_url)
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError("model must be a non-empty model name, e.g. 'gemini-2.5-flash'")
        if not isinstance(self.cache_path, (str, Path)) or not str(self.cache_path):
            raise ValueError("cache_path must be the path of a JSONL file")
        object.__setattr__(self, "cache_path", Path(self.cache_path))
        if self.api_key_env is not None and not (
            isinstance(self.api_key_env, str) and _ENV_NAME.fullmatch(self.api_key_env)
        ):
            # Not echoed: a key pasted here by mistake must not end up in a log.
            raise ValueError(
                "api_key_env must be the NAME of an environment variable holding the key (e.g. GEMINI_API_KEY), "
                "not the key itself"
            )
        _check_int("max_concurrency", self.max_concurrency, 1)
        _check_int("max_retries", self.max_retries, 0)
        _check_int("max_tokens", self.max_tokens, 1)
        _check_int("regenerate_mismatches", self.regenerate_mismatches, 0)
        if self.max_image_side is not None:
            _check_int("max_image_side", self.max_image_side, 64)
        _check_number("timeout_s", self.timeout_s, low=0.0, low_inclusive=False)
        _check_number("temperature", self.temperature, low=0.0, high=2.0)
        if not isinstance(self.allow_credentialed_remote, bool):
            raise ValueError("allow_credentialed_remote must be True or False")


def _check_base_url(url: object) -> None:
    """base_url must be a plain http(s) URL: no credentials or query string, which would leak into errors."""
    if not isinstance(url, str):
        raise ValueError(f"base_url must be a string, got {type(url).__name__}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as error:
        raise ValueError(f"base_url {url!r} is not a valid URL: {error}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"base_url must be an http:// or https:// URL with a host, e.g. http://localhost:8000/v1; got {url!r}"
        )
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise ValueError(
            "base_url must not carry credentials, a query string or a fragment; put the API key in the "
            "environment variable named by api_key_env"
        )


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_number(name: str, value: object, low: float, high: float | None = None, low_inclusive: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= low if low_inclusive else value > low) and (high is None or value <= high)
    if not ok:
        bounds = f"{'>=' if low_inclusive else '>'} {low}" + (f" and <= {high}" if high is not None else "")
        raise ValueError(f"{name} must be a number {bounds}, got {value!r}")


def _env_headers_removed() -> dict[str, Any]:
    """Headers the openai client would add from the environment, each mapped to "omit".

    ``OpenAI(...)`` fills the organization and project headers from ``OPENAI_ORG_ID`` / ``OPENAI_PROJECT_ID``
    and adds any header listed in ``OPENAI_CUSTOM_HEADERS`` (``lib/_client_auth.py: sync__init__``): set for
    OpenAI's own API, they have no business reaching this endpoint. Explicit headers override them.
    """
    names = {"OpenAI-Organization", "OpenAI-Project"}
    for line in os.environ.get("OPENAI_CUSTOM_HEADERS", "").split("\n"):
        name = line.partition(":")[0].strip()
        if ":" in line and name and name.lower() != "authorization":  # Authorization is set on every request
            names.add(name)
    return dict.fromkeys(names, openai.omit)


def open_client(config: ApiTeacherConfig) -> OpenAI:
    """An openai client for exactly the configured endpoint: no retries of its own (see `ApiTeacher._chat`).

    base_url and api_key are always given, so ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` are never read; the
    key that is sent is set per request (``extra_headers``), the client's own is a placeholder. Redirects are
    not followed: a POST with an image must not land on a host nobody configured.
    """
    http_client = httpx.Client(
        timeout=config.timeout_s,
        limits=httpx.Limits(max_connections=config.max_concurrency, max_keepalive_connections=config.max_concurrency),
        follow_redirects=False,
        # A proxy from the environment has no business relaying requests meant for this machine.
        trust_env=not is_local_endpoint(config.base_url),
    )
    client = OpenAI(
        base_url=config.base_url,
        api_key="unused",
        timeout=config.timeout_s,
        max_retries=0,
        http_client=http_client,
        default_headers=_env_headers_removed(),
    )
    # The client also describes this machine (X-Stainless-OS, -Arch, -Runtime-Version, ...): no endpoint needs that.
    machine = {name: openai.omit for name in client.default_headers if name.lower().startswith("x-stainless")}
    return client.with_options(default_headers=machine)
