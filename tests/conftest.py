"""Test session set-up: 4 fake CPU devices, data locations, shared fixtures.

XLA_FLAGS must be set before jax is imported, so it is done here at import
time: every test process sees 4 CPU devices (for correctness, not speed).
Raw data comes from ../shared/data when it is there (JAXGEN_DATA_DIR); TFDS
preparations are shared by the whole session in build/tfds.
"""

import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if SHARED_DATA.is_dir():
    os.environ.setdefault("JAXGEN_DATA_DIR", str(SHARED_DATA))
os.environ.setdefault("JAXGEN_TFDS_DIR", str(ROOT / "build" / "tfds"))
