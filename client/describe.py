"""How `vae client info` shows one model version to a person: a line per thing it takes, gives or declares."""

from __future__ import annotations

from client.results import ModelInfo


def _number(value: float) -> str:
    # float32 on the wire: 0.18215 arrives as 0.18215000629...; six significant digits say it.
    return f"{value:.6g}"


def _images(info: ModelInfo) -> str:
    channels = f"{info.image_channels} channel{'s' if info.image_channels != 1 else ''}"
    size = (
        "x".join(map(str, info.image_size))
        if info.image_size
        else f"any size, multiple of {info.image_multiple_of}"
    )
    low, high = (_number(v) for v in info.value_range) if info.value_range else ("?", "?")
    return f"{channels}, {size}, values in [{low}, {high}]"


def _latent(info: ModelInfo) -> str:
    f = info.latent_downsampling
    if not f:
        return f"[{info.latent_channels}]"
    if info.image_size:
        height, width = info.image_size
        return f"[{info.latent_channels}, {height // f}, {width // f}]"
    return f"[{info.latent_channels}, H/{f}, W/{f}]"


def _yes(flag: bool, detail: str = "") -> str:
    return ("yes" + (f" ({detail})" if detail else "")) if flag else "no"


def _prior(info: ModelInfo) -> str:
    layers = info.prior_flow_layers
    return f"{info.prior} + {layers}-layer flow" if layers else info.prior


def describe(info: ModelInfo) -> list[str]:
    """The lines `vae client info` prints: images, latent, scaling and shift, decoder, prior, ..."""
    default = " (default)" if info.is_default else ""
    scaling, shift = _number(info.scaling_factor), _number(info.shift_factor)
    rows = [
        ("model", f"{info.name}/{info.version}{default}; versions {', '.join(map(str, info.versions))}"),
        ("images", _images(info)),
        ("latent", _latent(info)),
        ("scaling, shift", f"{scaling}, {shift}: --scaled latents are (z - {shift}) * {scaling}"),
        ("decoder output", info.decoder_output),
        ("has_prior", _yes(info.has_prior, _prior(info))),
        ("scorable", _yes(info.scorable)),
        ("classes", ", ".join(info.classes) if info.classes else "none (unconditional)"),
        ("provider", info.provider),
        ("limits", f"batches of {info.max_batch_items} items, requests of {info.max_request_items}"),
        ("created", info.created),
    ]
    width = max(len(name) for name, _ in rows)
    return [f"{name:<{width}}  {value}" for name, value in rows]
