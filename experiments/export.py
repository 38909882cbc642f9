"""Export a seq2seq run's translate function with jax.export, for experiments/serve.py.

    python -m experiments.export --workdir=/tmp/bible --out=/tmp/bible_export
    python -m experiments.export --workdir=/tmp/bible --out=E --num_beams=1,4 --batch=0

Writes to --out: translate_beams<k>.bin (jax.export's serialized StableHLO of
translate(params, source [batch, S] int32) -> (tokens [batch, max_new_tokens] int32, lengths
[batch] int32), one per --num_beams value, with the run's other config.sample settings),
params.msgpack (the run's eval params: EMA when kept), tokenizer.json and export.json (source
length, eos and pad ids, batch size, beams). --batch=0 exports a symbolic batch dimension
(any number of rows per call); --batch=N a fixed one (the server pads to N). The export runs on
the backend it is made on (jax.export's platforms: this one); serve.py needs only jax, numpy,
flax.serialization and tokenizers.
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
from absl import flags
from flax import serialization

from jaxgen import cli, runs
from jaxgen.config import ConfigError
from jaxgen.data import pairs
from jaxgen.sampling import decoding

flags.DEFINE_string("workdir", None, "Run directory written by experiments.train.")
flags.DEFINE_string("out", None, "Folder to write the export to.")
flags.DEFINE_list("num_beams", ["1", "4"], "Beam sizes to export (1: greedy).")
flags.DEFINE_integer("batch", 0, "Rows per call: 0 for a symbolic batch dimension.")


def export_translate(run: runs.Run, params, num_beams: int, batch: int) -> bytes:
    """The serialized jax.export of translate(params, source) for `num_beams` beams: the run's
    family's "translate" function (Steps.predict_fns) with the run's other decoding settings."""
    config = run.config
    sample = config.sample.copy_and_resolve_references()
    sample.update(num_beams=num_beams, num_return_sequences=1, temperature=0.0)
    settings = decoding.read_settings(sample)
    translate = functools.partial(run.steps.predict_fns["translate"], settings=settings)

    def fn(params, source):
        output = translate(params, source, jax.random.key(0))  # deterministic: greedy, beams
        return output.tokens, output.lengths

    rows = jax.export.symbolic_shape("b")[0] if batch == 0 else batch
    source = jax.ShapeDtypeStruct((rows, config.data.source_len), jnp.int32)
    params_spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    return jax.export.export(jax.jit(fn))(params_spec, source).serialize()


def main(argv):
    del argv
    config, workdir, out = flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.out
    if not out:
        raise ConfigError("--out: missing; name a folder for the export")
    try:
        beams = sorted({int(k) for k in flags.FLAGS.num_beams})
    except ValueError:
        raise ConfigError(f"--num_beams: {flags.FLAGS.num_beams} are not integers") from None
    if not beams or beams[0] < 1 or flags.FLAGS.batch < 0:
        raise ConfigError("--num_beams / --batch: beams must be >= 1 and batch >= 0")
    run = runs.load_run(config, workdir)
    if "translate" not in run.steps.predict_fns:
        raise ConfigError(
            f"--workdir: a {config.family!r} run, whose family does not translate; "
            "export takes translation (seq2seq) runs"
        )
    params = jax.device_get(run.state.eval_params)
    os.makedirs(out, exist_ok=True)
    for k in beams:
        path = os.path.join(out, f"translate_beams{k}.bin")
        exported = export_translate(run, params, k, flags.FLAGS.batch)
        with open(path, "wb") as f:
            f.write(exported)
        print(f"exported: {path}")
    with open(os.path.join(out, "params.msgpack"), "wb") as f:
        f.write(serialization.msgpack_serialize(params))
    run.tokenizer.save(os.path.join(out, "tokenizer.json"))
    meta = {
        "source_len": run.config.data.source_len,
        "eos_id": run.tokenizer.eos_id,
        "pad_id": pairs.pad_id(run.tokenizer),
        "batch": flags.FLAGS.batch,
        "num_beams": beams,
        "max_new_tokens": run.config.sample.max_new_tokens,
        "step": int(run.step),
    }
    with open(os.path.join(out, "export.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    print(f"export: {out} (step {run.step})")


if __name__ == "__main__":
    cli.define_workdir_config(__import__("sys").argv)
    cli.run(main)
