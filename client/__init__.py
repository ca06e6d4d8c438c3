"""The Python clients of vae.v1.VaeService and `vae client`: what a caller needs, nothing of the server."""
