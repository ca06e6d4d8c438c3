"""The supervisor's /metrics (service/workers.py): every worker's series, summed.

vae_requests_total counts every call once, and vae_model_info{version} counts the workers that have
that version loaded. What a worker that died had counted stays in the sums.
"""

from __future__ import annotations

import logging
import threading
import urllib.request
from collections.abc import Iterator

from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

SCRAPE_TIMEOUT_S = 5.0
# Series that only grow while a process lives: a dead worker's last values stay in the sums.
_MONOTONIC_TYPES = frozenset({"counter", "histogram", "summary"})

Series = tuple[str, tuple[tuple[str, str], ...]]


class SumOfWorkers(Collector):
    """Every worker's series, summed by name and labels, plus what workers that died had counted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._urls: dict[int, str] = {}  # serving workers' /metrics, by worker index
        self._last: dict[int, dict[Series, float]] = {}  # each one's values at its last read
        self._families: dict[str, tuple[str, str]] = {}  # name -> (documentation, type)
        self._kind_of: dict[str, str] = {}  # sample name -> its family's name
        self._retired: dict[Series, float] = {}

    def add(self, index: int, metrics_port: int) -> None:
        with self._lock:
            self._urls[index] = f"http://127.0.0.1:{metrics_port}/metrics"

    def retire(self, index: int) -> None:
        """Worker `index` died: its monotonic series from its last read stay in the sums; gauges go."""
        with self._lock:
            self._urls.pop(index, None)
            for key, value in self._last.pop(index, {}).items():
                name = key[0]
                kind = self._families[self._kind_of[name]][1]
                if kind in _MONOTONIC_TYPES and not name.endswith("_created"):
                    self._retired[key] = self._retired.get(key, 0.0) + value

    def _read(self) -> None:
        for index, url in list(self._urls.items()):
            try:
                with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
                    text = response.read().decode()
            except OSError as exc:  # a worker that is stopping or dying: its last read stands
                log.warning("metrics of worker %d not read (%s): %s", index, url, exc)
                continue
            values: dict[Series, float] = {}
            for family in text_string_to_metric_families(text):
                self._families.setdefault(family.name, (family.documentation, family.type))
                for sample in family.samples:
                    self._kind_of.setdefault(sample.name, family.name)
                    values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
            if index in self._urls:  # not retired while it was read
                self._last[index] = values

    def refresh(self) -> None:
        """Read every worker now (the supervisor's periodic snapshot)."""
        with self._lock:
            self._read()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            self._read()
            totals = dict(self._retired)
            for values in self._last.values():
                for key, value in values.items():
                    totals[key] = totals.get(key, 0.0) + value
            families = {name: Metric(name, doc, kind) for name, (doc, kind) in self._families.items()}
            for (sample_name, labels), value in totals.items():
                families[self._kind_of[sample_name]].add_sample(sample_name, dict(labels), value)
        yield from families.values()
