"""Who may call: the port's TLS credentials and the bearer-token check.

- TLS (--tls-cert/--tls-key) and mutual TLS (--tls-client-ca) are the port's credentials.
- TokenAuth (--auth-token-file): every call but grpc.health.v1 must carry the metadata
  `authorization: Bearer <token>`, or it is answered UNAUTHENTICATED; health stays open so that
  load balancers and `vae health` need no secret. Refusals are counted in vae_requests_total.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from service.config import ServiceConfig, setting
from service.metrics import Metrics
from wire.channel import read_file, read_token

if TYPE_CHECKING:  # generic in grpc-stubs only
    Handler = grpc.RpcMethodHandler[Any, Any]
    Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    Interceptor = grpc.aio.ServerInterceptor
# None: no such method (grpc answers UNIMPLEMENTED). grpc-stubs leaves that case out.
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]
Context = grpc.aio.ServicerContext[Any, Any]

HEALTH_PREFIX = "/grpc.health.v1.Health/"
UNAUTHENTICATED_MESSAGE = "missing or wrong bearer token: send the metadata 'authorization: Bearer <token>'"
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
    client_ca = _read(config, "tls_client_ca") if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(_read(config, "tls_key"), _read(config, "tls_cert"))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def check_files(config: ServiceConfig) -> None:
    """Read every file the settings name: ValueError or OSError, naming it, for one that cannot be used."""
    server_credentials(config)
    if config.auth_token_file:
        read_token(Path(config.auth_token_file))


def _read(config: ServiceConfig, name: str) -> bytes:
    return read_file(Path(getattr(config, name)), setting(name))


def interceptors(config: ServiceConfig, metrics: Metrics) -> list[Interceptor]:
    """The token check when a token is configured; none otherwise, so no interceptor costs a call."""
    if config.auth_token_file:
        return [TokenAuth(read_token(Path(config.auth_token_file)), metrics)]
    return []


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
        # Labelled by the method's short name (Decode), as the servicer counts the calls it answers.
        self._requests.labels(details.method.rsplit("/", 1)[-1], "UNAUTHENTICATED").inc()
        return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
