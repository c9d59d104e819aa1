"""ASGI middleware in front of the BentoML app: bearer-token auth and the shape of upload requests.

Everything a client can get wrong before the image is decoded is answered here with a 4xx JSON body
(`{"error": ..., "status": ...}`), so BentoML's own request parsing only ever sees a well-formed
multipart upload that has a file in its `image` field (and never a URL it would go and fetch).
"""
from __future__ import annotations

import hmac
import json
import os
import typing as t

OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/health"})
MIN_TOKEN_CHARS = 16
PLACEHOLDERS = frozenset({"CHANGE_ME", "changeme", "token"})


class TokenMissing(RuntimeError):
    pass


def api_token(env: t.Mapping[str, str] = os.environ) -> str | None:
    """The bearer token the API requires, or None (open). With CMUNEXT_REQUIRE_AUTH=true (the Kubernetes
    Deployment sets it) a missing, placeholder or short token refuses the start instead of serving openly."""
    token = (env.get("CMUNEXT_API_TOKEN") or "").strip() or None
    required = (env.get("CMUNEXT_REQUIRE_AUTH") or "").strip().lower() in ("1", "true", "yes")
    if required and (token is None or token in PLACEHOLDERS or len(token) < MIN_TOKEN_CHARS):
        raise TokenMissing("CMUNEXT_REQUIRE_AUTH is set but CMUNEXT_API_TOKEN is "
                           + ("missing" if token is None else "a placeholder or shorter than 16 characters")
                           + ": refusing to serve without authentication (Secret cmunext-serving, key CMUNEXT_API_TOKEN)")
    return token
PAGE_PATHS = frozenset({"/", "/ui", "/ui/demo.png"})  # static page + demo image: no data, so no token
FIELD = "image"


async def send_json(send, status: int, payload: dict, headers: t.Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({**payload, "status": status}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    def __init__(self, app, *, api_paths: t.Iterable[str], token: str | None, max_bytes: int) -> None:
        self.app, self.api_paths = app, frozenset(api_paths)
        self.token = (token or "").encode() or None
        self.max_bytes = max_bytes

    def _authorized(self, scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, credential = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(credential.strip(), self.token)
        return False

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        is_page = method in ("GET", "HEAD") and path in PAGE_PATHS
        if self.token and path not in OPEN_PATHS and not is_page and not self._authorized(scope):
            return await send_json(send, 401, {"error": "missing or wrong bearer token: send 'Authorization: Bearer <token>'"},
                                   [(b"www-authenticate", b'Bearer realm="cmunext"')])
        if method == "POST" and path in self.api_paths:
            return await self._upload(scope, receive, send)
        return await self.app(scope, receive, send)

    async def _upload(self, scope, receive, send) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        ctype = headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            return await send_json(send, 415, {"error": f"expected a multipart/form-data upload with the image in field "
                                                        f"'{FIELD}', got content type {ctype or 'none'!r}"})
        declared = headers.get("content-length")
        if declared is not None and not declared.isdigit():
            return await send_json(send, 400, {"error": f"bad Content-Length {declared!r}"})
        if declared is not None and int(declared) > self.max_bytes:
            await _drain(receive, limit=4 * self.max_bytes)
            return await send_json(send, 413, {"error": f"request body of {int(declared):,} bytes exceeds the limit of "
                                                        f"{self.max_bytes:,} bytes"})
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _drain(receive, limit=4 * self.max_bytes)
                return await send_json(send, 413, {"error": f"request body exceeds the limit of {self.max_bytes:,} bytes"})
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if not body:
            return await send_json(send, 400, {"error": f"empty request body: upload an image in field '{FIELD}'"})
        problem = await _check_form(scope, body)
        if problem:
            return await send_json(send, 400, {"error": problem})

        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


async def _drain(receive, limit: int) -> None:
    """Read (and drop) what the client still sends, so it sees our answer instead of a reset connection."""
    seen = 0
    while seen <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _check_form(scope, body: bytes) -> str | None:
    from starlette.datastructures import UploadFile
    from starlette.requests import Request

    async def once():
        return {"type": "http.request", "body": body, "more_body": False}

    request = Request({k: v for k, v in scope.items() if k != "app"}, once)
    try:
        form = await request.form(max_files=4, max_fields=16)
    except Exception as exc:  # MultiPartException, or HTTPException wrapping it
        return f"malformed multipart body: {getattr(exc, 'detail', None) or getattr(exc, 'message', None) or exc}"
    try:
        value = form.get(FIELD)
        if value is None:
            return f"no field '{FIELD}' in the upload (fields: {', '.join(form.keys()) or 'none'})"
        if not isinstance(value, UploadFile):
            return f"field '{FIELD}' must be a file upload, not a text value"
        if not value.size:
            return f"the uploaded file in field '{FIELD}' is empty"
        # BentoML json-decodes every other part, and a non-UTF-8 one makes it answer 500 (found by fuzzing):
        # the APIs take one file, so anything beside it is refused here
        extra = sorted({k for k in form.keys() if k != FIELD})
        if extra or len(form.getlist(FIELD)) > 1:
            shown = ", ".join(repr(k) for k in extra[:5]) or f"a second '{FIELD}'"
            return f"unexpected form field(s) {shown}: upload one image file in field '{FIELD}' and nothing else"
        return None
    finally:
        await form.close()
