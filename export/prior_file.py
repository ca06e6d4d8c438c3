"""A learned prior exported as its mixture file (prior.npz), checked against PyTorch's log p(z)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from export.errors import ExportError
from export.parity import PARITY_TOLERANCE
from repository.comparison import compare_outputs, probe_latents
from repository.manifest import PRIOR_KIND, PriorEntry, file_sha256
from repository.prior import PRIOR_FILE, read_mixture, save_prior
from training.model import VAE

# Seeds the prior's own samples among the probe latents.
_SAMPLE_SEED = 0


def write_prior(model: VAE, staged: Path) -> PriorEntry | None:
    """A learned prior as the mixture it is now, in PRIOR_FILE; None (nothing written) for N(0, I).

    A VampPrior's components are the encoder's posteriors at its pseudo-inputs, computed here once.
    The file's log p(z) must match PyTorch's on probe latents from N(0, I) and from the mixture itself.
    """
    config = model.config
    with torch.no_grad():
        components = model.prior_components()
        if components is None:
            return None
        means, logvars, log_weights = (c.numpy() for c in components)
        save_prior(staged / PRIOR_FILE, means, logvars, log_weights)
        entry = PriorEntry(
            kind=PRIOR_KIND,
            trained_as=config.prior,
            components=config.prior_components,
            file=PRIOR_FILE,
            sha256=file_sha256(staged / PRIOR_FILE),
        )
        prior = read_mixture(staged / PRIOR_FILE, config.prior_components, config.latent_dim)
        z = np.concatenate(
            [
                probe_latents(config.latent_dim, 64),
                prior.sample(np.random.default_rng(_SAMPLE_SEED), 64, 1.0),
            ]
        )
        # The mixture alone: a prior flow on it is checked with its own graphs (export/flow_graphs.py).
        expected = model.log_base_prior(torch.from_numpy(z)).numpy()
    # log p(z) reaches hundreds of nats far from the prior, where float32 resolves ~1e-5: scaled.
    (difference,) = compare_outputs(
        {"log_prior": expected}, {"log_prior": prior.log_prob(z)}, PARITY_TOLERANCE, scaled={"log_prior"}
    )
    if not difference.ok:
        raise ExportError(
            f"parity failed for {PRIOR_FILE}: its log p(z) {difference.describe('PyTorch')}; "
            "nothing was written"
        )
    return entry
