"""Datasets, the VAE, its objective, the training loop, evaluation and pictures (needs torch)."""
