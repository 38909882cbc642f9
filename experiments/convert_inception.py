"""Convert pytorch-fid's Inception weights into the .npz our FID Inception-v3 loads.

    python -m experiments.convert_inception \
        --torch_weights=pt_inception-2015-12-05-6726825d.pth \
        --out=$HOME/.cache/jaxgen/inception/pt_inception-2015-12-05.npz
    export JAXGEN_INCEPTION_WEIGHTS=$HOME/.cache/jaxgen/inception/pt_inception-2015-12-05.npz

The .pth (from github.com/mseitzer/pytorch-fid releases, tag fid_weights) needs
torch to read; a state dict saved as .npz ({name: tensor.numpy()}) does not.
"""

import os
import zipfile

from absl import flags

from jaxgen import cli
from jaxgen.config import ConfigError
from jaxgen.metrics import inception

flags.DEFINE_string("torch_weights", None, "pytorch-fid state dict: .pth or .npz.")
flags.DEFINE_string("out", None, "Where to write the converted .npz.")
flags.mark_flags_as_required(["torch_weights", "out"])


def read_weights(path: str) -> dict:
    """The state dict at `path`; every problem is a ConfigError naming the flag and file."""
    if not os.path.isfile(path):
        raise ConfigError(f"--torch_weights: no such file {path!r}")
    try:
        return inception.read_state_dict(path)
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
    state_dict = read_weights(options.torch_weights)
    try:
        variables = inception.convert(state_dict)
    except (KeyError, ValueError) as error:
        reason = error.args[0] if error.args else error
        raise ConfigError(f"--torch_weights: {options.torch_weights}: {reason}") from error
    try:
        inception.save_variables(variables, options.out)
    except OSError as error:
        raise ConfigError(f"--out: cannot write {options.out} ({error})") from error
    print(f"written: {options.out}")


if __name__ == "__main__":
    cli.run(main)
