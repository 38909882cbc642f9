"""jaxgen: generative models in JAX/Flax, trained by pure steps on a device mesh."""
