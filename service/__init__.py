"""The server: request validation, per-call handling, dynamic batcher, model loading, metrics; no client."""
