"""`auto` workers and batch limits: what each device makes of them, and limits that cannot hold them."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest

from repository.placement import CPU, CUDA
from service.config import ServiceConfig
from service.sizing import CPU_BATCH_ITEMS, CUDA_BATCH_ITEMS, sized, usable_cores, with_batch_limit


@pytest.mark.parametrize(
    ("provider", "cores", "workers", "batch"),
    [
        (CPU, 16, 1, CPU_BATCH_ITEMS),
        (CPU, 2, 1, CPU_BATCH_ITEMS),
        (CUDA, 16, 4, CUDA_BATCH_ITEMS),  # the H200 host of issue 29
        (CUDA, 2, 1, CUDA_BATCH_ITEMS),
        (CUDA, 9, 2, CUDA_BATCH_ITEMS),
        (CUDA, 192, 8, CUDA_BATCH_ITEMS),  # capped: each worker holds its own CUDA context
    ],
)
def test_auto_follows_the_device_and_the_cores(provider: str, cores: int, workers: int, batch: int) -> None:
    config = sized(ServiceConfig(), provider, cores)
    assert (config.workers, config.max_batch_items) == (workers, batch)
    assert (CPU_BATCH_ITEMS, CUDA_BATCH_ITEMS) == (256, 4096)


def test_counts_that_were_set_stay_as_set() -> None:
    config = sized(ServiceConfig(workers=3, max_batch_items=32), CUDA, 64)
    assert (config.workers, config.max_batch_items) == (3, 32)
    assert sized(config, CPU) == config  # resolving twice changes nothing


def test_the_log_says_what_auto_became(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="service.sizing"):
        sized(ServiceConfig(), CUDA, 16)
    assert "workers auto: 4 on CUDAExecutionProvider with 16 cores" in caplog.text
    assert "max batch items auto: 4096 on CUDAExecutionProvider" in caplog.text


def test_a_queue_smaller_than_the_devices_batch_limit_is_refused_with_the_fix() -> None:
    small = ServiceConfig(max_request_items=512, max_queue_items=1024)
    assert with_batch_limit(small, CPU).max_batch_items == 256  # fits on the CPU
    message = (
        "max_queue_items (1024) must be at least the batch limit, which is 4096 on CUDAExecutionProvider "
        "(max_batch_items auto); raise --max-queue-items (VAE_MAX_QUEUE_ITEMS) or set --max-batch-items"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        with_batch_limit(small, CUDA)


def test_usable_cores_follow_the_affinity_and_a_cgroup_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    assert usable_cores(cpu_max) == affinity  # no cgroup file
    cpu_max.write_text("max 100000\n")
    assert usable_cores(cpu_max) == affinity
    cpu_max.write_text("50000 100000\n")  # half a core: still one
    assert usable_cores(cpu_max) == 1
    cpu_max.write_text(f"{150000 * affinity} 100000\n")  # a quota above the affinity
    assert usable_cores(cpu_max) == affinity
