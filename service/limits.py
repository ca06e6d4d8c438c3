"""The server's message limits: receive sized to the largest valid request, send to the largest answer.

One limit for both directions made the receive side whatever the largest response needed (a
4,096-image Encode with 64 posterior samples answers 33.5 MB), while the largest valid request is
a few MB: every byte in between served only an attacker, whose invalid message is still read,
parsed and copied before it is refused. So the receive limit is derived, when not set, from
--max-request-items and the largest item of any model in the repository at start (a float32 image
or latent and its int64 label), with room for the message's other fields. A larger model added
later needs --max-receive-message-bytes set; the server's start line says the limit.

A model that takes images of any size has no largest item: its requests are given
ANY_SIZE_REQUEST_BYTES (64 MiB: five float32 RGB 1024x1024 images, or twenty-one in uint8), and a
larger limit is --max-receive-message-bytes. What one request's items may hold once decoded to
float32 is bounded apart, by --max-queue-bytes (service/servicer.py).
"""

from __future__ import annotations

import math
from pathlib import Path

from repository.errors import RepositoryError
from repository.layout import list_models, list_versions
from repository.manifest import read_manifest
from service.config import ServiceConfig

# Names, versions, seeds and the like around the tensors of a request.
_ENVELOPE_BYTES = 64 * 1024
# gRPC's own default: no model is so small that requests need less.
_FLOOR_BYTES = 4 * 2**20
_LABEL_BYTES = 8
ANY_SIZE_REQUEST_BYTES = 64 * 2**20


def largest_item_bytes(repo: Path) -> tuple[int, bool]:
    """The largest request item's bytes (image or latent, and label) of one-size versions; any of any size?"""
    largest, any_size = 0, False
    try:
        names = list_models(repo)
    except RepositoryError:
        return 0, False  # the server's load reports the repository itself
    for name in names:
        for version in list_versions(repo, name):
            try:
                manifest = read_manifest(repo / name / str(version))
            except RepositoryError:
                continue  # refused when loaded, with the reason
            image = manifest.fixed_image_shape
            if image is None:
                any_size = True
                continue
            item = 4 * max(math.prod(image), math.prod(manifest.latent_shape())) + _LABEL_BYTES
            largest = max(largest, item)
    return largest, any_size


def receive_limit(config: ServiceConfig) -> int:
    """config.max_receive_message_bytes, or (0) what the largest valid request of the repository needs."""
    if config.max_receive_message_bytes:
        return config.max_receive_message_bytes
    largest, any_size = largest_item_bytes(config.repo)
    fixed = config.max_request_items * largest + _ENVELOPE_BYTES
    return max(_FLOOR_BYTES, fixed, ANY_SIZE_REQUEST_BYTES if any_size else 0)
