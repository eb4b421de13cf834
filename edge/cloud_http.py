"""Calling the aggregator's JSON API from the Pi: the standard library only, plain errors.

Owns: one function that sends a JSON request and returns the JSON answer, turning every failure
(refusal with the server's `detail`, network error, timeout) into a CloudHttpError whose message
an installer can act on. Blocking: from asyncio, call it in a thread.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class CloudHttpError(Exception):
    """The call did not succeed; the message says why in plain words."""


def http_json(method: str, url: str, body: dict[str, Any] | None, timeout_s: float) -> Any:
    """Call a JSON endpoint; CloudHttpError with the server's `detail` or the network error."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(  # noqa: S310 - the URL is the installer's --cloud, http(s) only
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    if not url.startswith(("http://", "https://")):
        raise CloudHttpError(f"{url} is not an http:// or https:// URL")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("detail", "")
        except (ValueError, AttributeError):
            detail = ""
        if isinstance(detail, list):  # FastAPI validation errors
            detail = "; ".join(str(d.get("msg", d)) for d in detail)
        raise CloudHttpError(f"the cloud refused ({exc.code}): {detail or exc.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CloudHttpError(f"cannot reach the cloud at {url}: {reason}") from None
