"""Flax models, one file per family (gan, vae, gpt, ddpm); each owns its MODELS registry."""
