"""What a call passes before the servicer sees it: TLS, an optional bearer token, a decodable request.

- TLS (--tls-cert/--tls-key) and mutual TLS (--tls-client-ca) are the port's credentials.
- TokenAuth (--auth-token-file): every call but grpc.health.v1 must carry the metadata
  `authorization: Bearer <token>`, or it is answered UNAUTHENTICATED; health stays open so that
  load balancers and `vae health` need no secret.
- UndecodableRequests: bytes that are not a valid protobuf message of the method's request type are
  answered INVALID_ARGUMENT (grpc itself answers UNKNOWN, naming Python exception types).

Both interceptors count what they refuse in vae_requests_total, as the servicer counts the rest.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

from service.config import ServiceConfig, read_token
from service.metrics import Metrics
from service.servicer import SERVICE

HEALTH_PREFIX = "/grpc.health.v1.Health/"
SERVICE_PREFIX = f"/{SERVICE.full_name}/"
UNAUTHENTICATED_MESSAGE = "missing or wrong bearer token: send the metadata 'authorization: Bearer <token>'"

if TYPE_CHECKING:  # generic in grpc-stubs only
    Handler = grpc.RpcMethodHandler[Any, Any]
    Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    Interceptor = grpc.aio.ServerInterceptor
# None: no such method (grpc answers UNIMPLEMENTED). grpc-stubs leaves that case out.
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]
Context = grpc.aio.ServicerContext[Any, Any]
_HANDLER_KINDS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def server_credentials(config: ServiceConfig) -> grpc.ServerCredentials | None:
    """TLS for the port, requiring client certificates when a client CA is set; None: plaintext."""
    if not config.tls_cert:
        return None
    client_ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def interceptors(config: ServiceConfig, metrics: Metrics) -> list[Interceptor]:
    """Token check first (an unauthenticated request is never parsed), then the decoding guard."""
    gates: list[Interceptor] = []
    if config.auth_token_file:
        gates.append(TokenAuth(read_token(Path(config.auth_token_file)), metrics))
    gates.append(UndecodableRequests(metrics))
    return gates


def _method(details: grpc.HandlerCallDetails) -> str:
    return details.method.rsplit("/", 1)[-1]


def _refusal(handler: Handler, code: grpc.StatusCode, message: str) -> Handler:
    """A handler shaped like `handler` that answers `code` without parsing the request."""

    async def refuse(request: Any, context: Context) -> None:
        await context.abort(code, message)

    kind = _HANDLER_KINDS[handler.request_streaming, handler.response_streaming]
    refusal: Handler = kind(refuse)
    return refusal


class TokenAuth(Interceptor):
    """UNAUTHENTICATED for calls without `authorization: Bearer <token>`; health is exempt."""

    def __init__(self, token: str, metrics: Metrics) -> None:
        self._expected = f"Bearer {token}".encode()
        self._requests = metrics.requests

    def _authorized(self, details: grpc.HandlerCallDetails) -> bool:
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
                # Constant time: the comparison must not reveal how much of a guess was right.
                return hmac.compare_digest(given, self._expected)
        return False

    async def intercept_service(  # type: ignore[override]
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(details)
        if handler is None or details.method.startswith(HEALTH_PREFIX) or self._authorized(details):
            return handler
        self._requests.labels(_method(details), "UNAUTHENTICATED").inc()
        return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)


class _Undecodable:
    """What the tolerant deserializer returns instead of raising: the reason, for the client."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


class UndecodableRequests(Interceptor):
    """VaeService handlers whose deserializer turns a DecodeError into INVALID_ARGUMENT; built once each."""

    def __init__(self, metrics: Metrics) -> None:
        self._requests = metrics.requests
        self._handlers: dict[str, Handler] = {}

    async def intercept_service(  # type: ignore[override]
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler | None:
        if (guarded := self._handlers.get(details.method)) is not None:
            return guarded
        handler = await continuation(details)
        if handler is None or not details.method.startswith(SERVICE_PREFIX):
            return handler
        guarded = self._guard(handler, _method(details))
        self._handlers[details.method] = guarded
        return guarded

    def _guard(self, handler: Handler, name: str) -> Handler:
        parse: Any = handler.request_deserializer
        kind = SERVICE.methods_by_name[name].input_type.full_name
        message = f"the request is not a valid {kind} message (protobuf wire format)"
        refused = self._requests.labels(name, "INVALID_ARGUMENT")

        def tolerant(data: bytes) -> Any:
            try:
                return parse(data)
            except DecodeError:
                return _Undecodable(message)

        if handler.response_streaming:
            stream: Any = handler.unary_stream  # an async generator function here (grpc.aio)

            async def streaming(request: Any, context: Context) -> AsyncIterator[Any]:
                if isinstance(request, _Undecodable):
                    refused.inc()
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
                async for response in stream(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(
                streaming, request_deserializer=tolerant, response_serializer=handler.response_serializer
            )
        unary: Any = handler.unary_unary

        async def answer(request: Any, context: Context) -> Any:
            if isinstance(request, _Undecodable):
                refused.inc()
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            return await unary(request, context)

        return grpc.unary_unary_rpc_method_handler(
            answer, request_deserializer=tolerant, response_serializer=handler.response_serializer
        )
