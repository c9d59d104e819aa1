"""One classifier of storage errors for every place the project talks to object storage or a tracking server
(DVC remotes, the bento store, MLflow and the artifact store behind it): the cause, read from the whole
exception chain (and log records, where a library logs the cause and raises something vaguer), so each caller
can say in one sentence what is wrong and what to check.

Kinds, most specific first: `nocreds` (no credentials found), `auth` (credentials refused), `server` (HTTP
5xx), `unreachable` (nothing answers at the endpoint), `nobucket`, `missing` (the object or file is not there),
or "" when none of these is recognised.
"""
from __future__ import annotations

import logging

def _chain(exc: BaseException):
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack.extend([e.__cause__, e.__context__])
        for attr in ("exc", "errors", "exceptions"):  # DVC and fsspec wrap collections of errors
            inner = getattr(e, attr, None)
            if isinstance(inner, BaseException):
                stack.append(inner)
            elif isinstance(inner, (list, tuple)):
                stack.extend(x for x in inner if isinstance(x, BaseException))


_UNREACHABLE = ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError",
                "ServerDisconnectedError", "ConnectionRefusedError", "ConnectionError",
                "ClientConnectionError", "ReadTimeoutError", "NewConnectionError", "gaierror")
_AUTH_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken",
               "ExpiredToken", "InvalidClientTokenId", "AuthorizationHeaderMalformed", "403", "Forbidden")
_UNREACHABLE_TEXT = ("Could not connect to the endpoint", "Connection refused", "Failed to establish",
                     "Max retries exceeded", "Read timed out", "Connection aborted", "RemoteDisconnected")


def classify(exc: BaseException, logs: list[logging.LogRecord] = ()) -> tuple[str, str]:
    """('nocreds'|'auth'|'unreachable'|'nobucket'|'missing'|'server'|'', detail) from an exception chain.

    The whole chain is read before deciding: DVC wraps the cause (e.g. NoCredentialsError inside a
    DataIndexDirError), and the most specific cause wins."""
    found: dict[str, str] = {}
    texts = []
    for e in _chain(exc):
        name, text = type(e).__name__, str(e)
        texts.append(text)
        response = getattr(e, "response", None)
        code = str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""
        if name == "NoCredentialsError" or "Unable to locate credentials" in text:
            found.setdefault("nocreds", text)
        if code in _AUTH_CODES or any(c in text for c in _AUTH_CODES[:6]):
            found["auth"] = f"{code}: {text}" if code else text  # prefer the innermost S3 error
        elif isinstance(e, PermissionError) and "Forbidden" in text:
            found.setdefault("auth", text)
        if code == "NoSuchBucket" or "NoSuchBucket" in text or "bucket does not exist" in text.lower():
            found.setdefault("nobucket", text)
        if name in _UNREACHABLE or isinstance(e, (ConnectionRefusedError, TimeoutError)) \
                or any(s in text for s in _UNREACHABLE_TEXT):
            found.setdefault("unreachable", text)
        if code.startswith("5") or "error responses" in text or "error code 5" in text:
            found.setdefault("server", text)
        if "No storage files available" in text or name in ("DataIndexDirError", "FileNotFoundError"):
            found.setdefault("missing", text)
    for r in logs:
        msg = r.getMessage()
        if "Unable to locate credentials" in msg:
            found.setdefault("nocreds", msg)
        if "Could not connect" in msg or "Connection refused" in msg:
            found.setdefault("unreachable", msg)
    for kind in ("nocreds", "auth", "server", "unreachable", "nobucket", "missing"):  # 5xx after retries: "server"
        if kind in found:
            return kind, found[kind]
    return "", "; ".join(t for t in texts if t)[:500]
