"""Convert pytorch-fid's Inception weights into the .npz our FID Inception-v3 loads.

    python -m experiments.convert_inception \
        --torch_weights=pt_inception-2015-12-05-6726825d.pth \
        --out=$HOME/.cache/jaxgen/inception/pt_inception-2015-12-05.npz
    export JAXGEN_INCEPTION_WEIGHTS=$HOME/.cache/jaxgen/inception/pt_inception-2015-12-05.npz

The .pth (from github.com/mseitzer/pytorch-fid releases, tag fid_weights) needs
torch to read; a state dict saved as .npz ({name: tensor.numpy()}) does not.
"""

from absl import flags

from jaxgen import cli
from jaxgen.metrics import inception

flags.DEFINE_string("torch_weights", None, "pytorch-fid state dict: .pth or .npz.")
flags.DEFINE_string("out", None, "Where to write the converted .npz.")
flags.mark_flags_as_required(["torch_weights", "out"])


def main(argv):
    del argv
    options = flags.FLAGS
    variables = inception.convert(inception.read_state_dict(options.torch_weights))
    inception.save_variables(variables, options.out)
    print(f"written: {options.out}")


if __name__ == "__main__":
    cli.run(main)
