"""`auto` batch limits and worker counts: what they become once the device is known, and why.

Measured on an H200 host with 16 cores (issue 29, docs/gpu.md):

- Batch limit. On the CPU the cost per item is flat from a few dozen items up (the decoder at
  8.0k items/s at 256 and 512 on 2 cores, docs/benchmarks.md; 18k from 64 to 4,096 with 16
  threads): a batch past 256 only makes the callers behind it wait. The CUDA decoder ran at 0.86M
  items/s at 256, 1.95M at 4,096 and 2.10M at 16,384: 4,096 takes nearly all of the gain at a
  quarter of the largest batch's memory. The knee the warm-up finds below the limit
  (service/batcher.py) still starts small loads' batches at once.
- Workers. One grpc.aio process answered at most ~4.5k small calls/s, whatever the device: its
  event loop is one core. Four workers answered 2.6x as many on 16 cores, and with this code 10.7k
  Decode calls/s against 3.9k for one and 4.8k for eight (the load generator on the same cores;
  docs/gpu.md). So one per 4 cores, at most 8: each holds its own CUDA context and a copy of every
  version. On the CPU the workers' sessions would compete for the cores their front ends need, so
  auto is 1 there.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from pathlib import Path

from repository.placement import CUDA
from service.config import AUTO, ServiceConfig, setting

log = logging.getLogger(__name__)

CPU_BATCH_ITEMS = 256
CUDA_BATCH_ITEMS = 4096
CORES_PER_WORKER = 4
MAX_AUTO_WORKERS = 8
# cgroup v2: "QUOTA PERIOD" in microseconds, or "max PERIOD" without a quota.
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The cores this process may use: its CPU affinity (a cpuset), or fewer under a CPU quota.

    `docker run --cpus 4` and a Kubernetes CPU limit set the cgroup's quota, not the affinity: a
    process that counted the host's cores would start workers for cores it is never given.
    """
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()
    except (OSError, ValueError):  # no cgroup v2 here, or not one line of two fields
        return cores
    if quota == "max":
        return cores
    return max(1, min(cores, math.ceil(int(quota) / int(period))))


def auto_batch_items(provider: str) -> int:
    return CUDA_BATCH_ITEMS if provider == CUDA else CPU_BATCH_ITEMS


def auto_workers(provider: str, cores: int) -> int:
    return min(MAX_AUTO_WORKERS, max(1, cores // CORES_PER_WORKER)) if provider == CUDA else 1


def with_batch_limit(config: ServiceConfig, provider: str) -> ServiceConfig:
    """`config` with an auto --max-batch-items resolved for `provider`; ValueError if the queue is smaller."""
    if config.max_batch_items != AUTO:
        return config
    items = auto_batch_items(provider)
    if config.max_queue_items < items:
        raise ValueError(
            f"max_queue_items ({config.max_queue_items}) must be at least the batch limit, which is "
            f"{items} on {provider} (max_batch_items auto); raise {setting('max_queue_items')} or set "
            f"{setting('max_batch_items')}"
        )
    return dataclasses.replace(config, max_batch_items=items)


def sized(config: ServiceConfig, provider: str, cores: int | None = None) -> ServiceConfig:
    """`config` with every auto count resolved for `provider` and `cores` (default: usable_cores())."""
    resolved = with_batch_limit(config, provider)
    if config.workers == AUTO:
        cores = usable_cores() if cores is None else cores
        resolved = dataclasses.replace(resolved, workers=auto_workers(provider, cores))
        log.info(
            "workers auto: %d on %s with %d cores (one per %d on CUDA, at most %d; 1 on CPU)",
            resolved.workers,
            provider,
            cores,
            CORES_PER_WORKER,
            MAX_AUTO_WORKERS,
        )
    if config.max_batch_items == AUTO:
        log.info("max batch items auto: %d on %s", resolved.max_batch_items, provider)
    return resolved
