"""vae.v1: generated from protos/vae/v1/vae.proto by `make protos`; never edited by hand."""
