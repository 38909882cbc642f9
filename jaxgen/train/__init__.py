"""Training: the generic loop (loop.py) and one file per family (vae.py, ...).

Each family module registers a `jaxgen.family.Family` under its own name, which is the name of
its file: jaxgen.family.get_family("vae") imports jaxgen/train/vae.py when first asked for, so
nothing lists the families. The contract (Steps, Family, the registry) lives in
jaxgen/family.py, below the loop; the pieces every step shares in state.py and gradients.py;
latent_stages.py is latent diffusion's reading of its earlier runs.
"""
