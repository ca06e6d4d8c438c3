"""What GetModelInfo says of a loaded version, and what Sample may draw for it: the manifest on the wire."""

from __future__ import annotations

from repository.manifest import Manifest
from service.codec import check_pixels
from service.errors import FailedPrecondition, InvalidArgument
from service.registry import LoadedModel
from vae.v1 import vae_pb2 as pb


def model_info(model: LoadedModel, max_request_items: int) -> pb.ModelInfo:
    """ModelInfo less what the registry knows (versions, is_default).

    Format 1's latent_dim and image_shape are filled where the model has them (a flat latent, one
    image size) and left 0 and empty otherwise; the contract version 2 fields are filled for all.
    """
    manifest = model.manifest
    fixed = manifest.fixed_image_shape
    factor, shift = manifest.scaling
    return pb.ModelInfo(
        name=manifest.name,
        version=manifest.version,
        latent_dim=0 if manifest.is_spatial else manifest.latent_dim,
        image_shape=fixed or (),
        likelihood=manifest.decoder_output,
        provider=model.provider,
        pairing_id=manifest.pairing_id,
        created=manifest.created,
        max_batch_items=model.decoder.max_batch_items,
        max_request_items=max_request_items,
        classes=manifest.classes,
        prior="normal" if manifest.prior is None else manifest.prior.trained_as,
        image_channels=manifest.image.channels,
        image_size=() if fixed is None else fixed[1:],
        image_multiple_of=manifest.divisibility,
        value_range=manifest.value_range,
        latent_channels=manifest.latent.channels,
        latent_downsampling=manifest.latent.downsampling or 0,
        scaling_factor=factor,
        shift_factor=shift,
        decoder_output=manifest.decoder_output,
        has_prior=manifest.has_prior,
        scorable=manifest.scorable,
        prior_flow_layers=0 if manifest.prior_flow is None else manifest.prior_flow.layers,
    )


def sample_shape(manifest: Manifest, height: int, width: int, max_pixels: int) -> tuple[int, ...]:
    """One latent's shape for Sample at height x width (0 x 0: the model's fixed size).

    FailedPrecondition for a model without a prior worth sampling; InvalidArgument for a size it
    does not take, or of more than max_pixels pixels.
    """
    if not manifest.has_prior:
        raise FailedPrecondition(
            f"model {manifest.name!r} version {manifest.version} declares no prior worth sampling "
            "(has_prior is false: a latent-diffusion VAE's latents come from its diffusion model, not "
            "N(0, I)); Decode latents made elsewhere instead"
        )
    size = None if (height, width) == (0, 0) else (height, width)
    fixed = manifest.fixed_image_shape
    if size is not None and fixed is not None and size != fixed[1:]:
        raise InvalidArgument(
            f"height, width: model {manifest.name!r} takes {list(fixed[1:])} images, not {list(size)}; "
            "leave them 0"
        )
    try:
        shape = manifest.latent_shape(size)
    except ValueError as exc:
        raise InvalidArgument(f"height, width: {exc}") from None
    if size is not None and fixed is None:
        check_pixels("height, width", height, width, max_pixels)
    return shape
