"""Outbound HTTP through the standard ``wasi:http/outgoing-handler`` (0.2),
for handlers whose manifest grants origins in an ``[http]`` section::

    from eventhost import http

    response = http.post("https://pay.example.com/charges",
                         json={"amount": 42},
                         headers={"authorization": "Bearer ..."})
    receipt = response.raise_for_status().json()

A request that gets no response raises: Retryable for a timeout or a
refused or broken connection, Permanent when the host refuses it (an origin
the manifest does not grant, too many requests), when it is malformed or when
the response body passes the host's cap. A response is returned whatever its
status; ``raise_for_status`` turns 5xx, 408 and 429 into Retryable and other
4xx into Permanent.

A request is sent when it is made, whatever the handler does afterwards, and
again when the event is retried. The host adds an ``Idempotency-Key`` header
(unless the request has one) that is the same on every retry of the same
event, so a provider that honours such keys performs the effect once.
Redirects are returned, not followed. A request from a component built
without an ``[http]`` section raises Permanent.
"""

from __future__ import annotations

import json as _json
from typing import Any, Mapping, Optional, Union

from componentize_py_types import Err, Ok

from . import Permanent, Retryable, _to_json

# Imported now, while componentize-py builds the component: the generated
# modules cannot be imported later, inside the running component.
try:
    from wit_world.imports import outgoing_handler as _outgoing_handler
    from wit_world.imports import wasi_http_types as _http_types
except ImportError:  # built without [http]
    _outgoing_handler = _http_types = None

WRITE_CHUNK = 4096  # the largest write the host takes in one call
READ_CHUNK = 64 * 1024


class Response:
    """A response, its body read in full (up to the host's cap)."""

    def __init__(self, status: int, headers: list[tuple[str, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> Optional[str]:
        """The first value of header ``name`` (case-insensitive), as text."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value.decode("utf-8", "replace")
        return None

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON; a body that is not is Permanent."""
        try:
            return _json.loads(self.body)
        except ValueError as e:
            raise Permanent(f"response body is not the JSON expected: {e}") from None

    def raise_for_status(self) -> "Response":
        """This response if it is a success (< 400); otherwise Retryable for
        5xx, 408 and 429 and Permanent for other 4xx."""
        if self.status < 400:
            return self
        why = f"HTTP {self.status}: {self.text()[:200]}"
        if self.status in (408, 429) or self.status >= 500:
            raise Retryable(why)
        raise Permanent(why)

    def __repr__(self) -> str:
        return f"<Response {self.status}, {len(self.body)} bytes>"


def get(url: str, **options: Any) -> Response:
    return request("GET", url, **options)


def post(url: str, **options: Any) -> Response:
    return request("POST", url, **options)


def request(
    method: str,
    url: str,
    *,
    headers: Optional[Mapping[str, Union[str, bytes]]] = None,
    body: Union[bytes, str, None] = None,
    json: Any = None,
) -> Response:
    """Sends a request and reads the whole response. ``json`` encodes a body
    and sets its content type; ``body`` sends bytes (or UTF-8 text) as is."""
    t, outgoing_handler = _bindings()
    scheme, authority, path = _split_url(t, url)
    fields = [(k.lower(), v.encode() if isinstance(v, str) else bytes(v))
              for k, v in (headers or {}).items()]
    if json is not None:
        body = _to_json(json)
        if not any(k == "content-type" for k, _ in fields):
            fields.append(("content-type", b"application/json"))
    data = body.encode() if isinstance(body, str) else (body or b"")
    try:
        request = t.OutgoingRequest(t.Fields.from_list(fields))
    except Err as e:
        raise Permanent(f"invalid request: headers: {e.value}") from None
    for what, setter, value in [
        ("method", request.set_method, _method(t, method)),
        ("scheme", request.set_scheme, scheme),
        ("authority", request.set_authority, authority),
        ("path", request.set_path_with_query, path),
    ]:
        try:
            setter(value)
        except Err:
            raise Permanent(f"invalid request: {what} of {url}") from None
    outgoing_body = request.body()
    try:
        future = outgoing_handler.handle(request, None)
    except Err as e:
        raise _classify(e.value) from None
    # A request the host refuses closes the body stream: its answer (below)
    # says why, so a failed write is reported only if the answer does not.
    unsent = _write_body(t, outgoing_body, data)
    with future:
        while (answer := future.get()) is None:
            with future.subscribe() as ready:
                ready.block()
    if not isinstance(answer, Ok):
        raise Retryable("request failed: response already taken")
    if not isinstance(answer.value, Ok):
        raise _classify(answer.value.value)
    if unsent is not None:
        raise unsent
    with answer.value.value as response:
        status = response.status()
        with response.headers() as fields_in:
            headers_in = fields_in.entries()
        incoming_body = response.consume()
        return Response(status, headers_in, _read_body(t, incoming_body))


def _bindings() -> tuple[Any, Any]:
    if _outgoing_handler is None:
        raise Permanent("HTTP is not linked: add an [http] section to handler.toml and rebuild")
    return _http_types, _outgoing_handler


def _split_url(t: Any, url: str) -> tuple[Any, str, str]:
    invalid = Permanent(f"invalid request: {url!r} is not an absolute http(s) URL")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https"):
        raise invalid
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:] or "/"
    if not authority or not path.startswith("/"):
        raise invalid
    return (t.Scheme_Http() if scheme == "http" else t.Scheme_Https()), authority, path


def _method(t: Any, method: str) -> Any:
    known = {"GET": t.Method_Get, "POST": t.Method_Post, "PUT": t.Method_Put,
             "DELETE": t.Method_Delete, "PATCH": t.Method_Patch, "HEAD": t.Method_Head}
    upper = method.upper()
    return known[upper]() if upper in known else t.Method_Other(upper)


def _write_body(t: Any, body: Any, data: bytes) -> Optional[Exception]:
    """Sends the request body; the error if that failed."""
    try:
        with body.write() as stream:
            for at in range(0, len(data), WRITE_CHUNK):
                stream.blocking_write_and_flush(data[at:at + WRITE_CHUNK])
    except Err as e:
        body.__exit__(None, None, None)  # dropped unfinished: the request fails
        return Retryable(f"request failed: sending the body: {e.value}")
    try:
        t.OutgoingBody.finish(body, None)
    except Err as e:
        return _classify(e.value)
    return None


def _read_body(t: Any, body: Any) -> bytes:
    chunks = []
    with body.stream() as stream:
        while True:
            try:
                chunks.append(stream.blocking_read(READ_CHUNK))
            except Err as e:
                if not hasattr(e.value, "value"):  # StreamError_Closed: the end
                    break
                raise _read_error(t, e.value.value) from None
    t.IncomingBody.finish(body).__exit__(None, None, None)  # trailers unused
    return b"".join(chunks)


def _read_error(t: Any, error: Any) -> Exception:
    code = t.http_error_code(error)
    if isinstance(code, t.ErrorCode_HttpResponseBodySize):
        return Permanent(f"response too large: {code}")
    if code is not None:
        return _classify(code)
    text = (error.to_debug_string().splitlines() or [""])[0]
    if "body size exceeds" in text:
        return Permanent(f"response too large: {text}")
    return Retryable(f"request failed: reading the response body: {text}")


def _classify(code: Any) -> Exception:
    """Denied, invalid: Permanent. Anything else (timeouts, refused or broken
    connections): Retryable."""
    name = type(code).__name__.removeprefix("ErrorCode_")
    if name in ("HttpRequestDenied", "DestinationIpProhibited"):
        return Permanent(f"request denied: {name}")
    if name in ("HttpRequestUriInvalid", "HttpRequestMethodInvalid", "HttpRequestUriTooLong"):
        return Permanent(f"invalid request: {name}")
    detail = getattr(code, "value", None)
    return Retryable(f"request failed: {name}" + (f" ({detail})" if detail else ""))
