"""The graph contract's roles and tensor names, which every graph, manifest and caller shares."""

from __future__ import annotations

from typing import Any

GRAPHS = ("encoder", "decoder")
# The graph contract's tensor names: encoder x -> (mu, logvar); decoder z -> probs (+ logits if
# Bernoulli), or image for a deterministic decoder.
IMAGES, MU, LOGVAR = "x", "mu", "logvar"
LATENTS, PROBS, LOGITS, DECODED_IMAGE = "z", "probs", "logits", "image"
# A prior flow's tensors: its density graph z -> (u, log_det), its sampler u -> z.
BASE_LATENTS, LOG_DET = "u", "log_det"
# A conditional model's class index, int64 [batch], a second input of both graphs.
LABELS = "y"
LABEL_DTYPE = "int64"


def feeds(name: str, values: Any, labels: Any | None) -> dict[str, Any]:
    """A graph's inputs: `values` as input `name`, and a conditional model's labels as LABELS."""
    return {name: values} if labels is None else {name: values, LABELS: labels}
