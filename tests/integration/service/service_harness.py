"""A real VaeServer for tests: create_server on port 0, run on its own event-loop thread in this process."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from service.config import ServiceConfig
from service.server import VaeServer, create_server

T = TypeVar("T")


class RunningServer:
    """A VaeServer on its own event loop thread; tests talk to it over loopback like any client."""

    def __init__(self, config: ServiceConfig, *, load: bool = True) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-server", daemon=True)
        self._thread.start()
        self.server: VaeServer = self.call(self._start(config))
        self.target = f"127.0.0.1:{self.server.port}"
        self.metrics_url = f"http://127.0.0.1:{self.server.metrics_port}/metrics"
        if load:
            self.call(self.server.load_models())

    @staticmethod
    async def _start(config: ServiceConfig) -> VaeServer:
        server, _ = create_server(config)
        await server.start()
        return server

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def metric(self, series: str, **labels: str) -> float:
        value = self.server.metrics.registry.get_sample_value(series, labels)
        return 0.0 if value is None else value

    def stop(self) -> None:
        self.call(self.server.stop(grace=1.0))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()


def config_for(repo: Path, **options: Any) -> ServiceConfig:
    settings: dict[str, Any] = {
        "repo": repo,
        "model": "tiny",
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": 0,
        "max_batch_items": 8,
        "max_request_items": 64,
        "max_queue_items": 256,
        **options,
    }
    return ServiceConfig(**settings)
