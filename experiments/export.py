"""Export a seq2seq run's translate function with jax.export, for experiments/serve.py.

    python -m experiments.export --workdir=/tmp/bible --out=/tmp/bible_export
    python -m experiments.export --workdir=/tmp/bible --out=E --num_beams=1,4 --batch=0

Writes to --out: translate_beams<k>.bin (jax.export's serialized StableHLO of
translate(params, source [batch, S] int32) -> (tokens [batch, max_new_tokens] int32, lengths
[batch] int32), one per --num_beams value, with the run's other config.sample settings),
params.msgpack (the run's eval params: EMA when kept), tokenizer.json and export.json (source
length, eos and pad ids, batch size, beams, the SHA-256 of every file, which serve checks).
The folder is written whole or not at all: into a hidden temporary folder beside --out, renamed
to --out when complete (an earlier export there is replaced whole; a killed export leaves the
earlier one as it was, and its own hidden .partial- folder). --out inside a run's
checkpoints*/, an existing file, a folder that is not an earlier export, or a place it cannot
write is one line, exit 2, before anything compiles. --batch=0 exports a symbolic batch dimension
(any number of rows per call); --batch=N a fixed one (the server pads to N). The export runs on
the backend it is made on (jax.export's platforms: this one); serve.py needs only jax, numpy,
flax.serialization, tokenizers, starlette and uvicorn.
"""

import functools
import json
import os
import re
import shutil
import tempfile

import jax
import jax.numpy as jnp
from absl import flags
from flax import serialization

from jaxgen import cli, runs, serving
from jaxgen.config import ConfigError
from jaxgen.data import pairs
from jaxgen.sampling import decoding

flags.DEFINE_string("workdir", None, "Run directory written by experiments.train.")
flags.DEFINE_string("out", None, "Folder to write the export to.")
flags.DEFINE_list("num_beams", ["1", "4"], "Beam sizes to export (1: greedy).")
flags.DEFINE_integer("batch", 0, "Rows per call: 0 for a symbolic batch dimension.")
EXPORT_FILES = {"export.json", "params.msgpack", "tokenizer.json", "serve.log"}


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


def check_out(out: str, workdir: str | None) -> str:
    """--out as an absolute path, refused with one line where an export must not go: inside a
    run's checkpoints, over a file, or over a folder that is not an earlier export."""
    if not out:
        raise ConfigError("--out: missing; name a folder for the export")
    out = os.path.abspath(out)
    real = os.path.realpath(out)
    runs_checkpoints = [os.path.realpath(os.path.join(workdir, "checkpoints"))] if workdir else []
    folder = real
    while True:
        name, parent = os.path.basename(folder), os.path.dirname(folder)
        if folder in runs_checkpoints or (
            name.startswith("checkpoints") and os.path.isfile(os.path.join(parent, "config.json"))
        ):
            raise ConfigError(f"--out: {out} is inside a run's {name}/; name a folder outside it")
        if parent == folder:
            break
        folder = parent
    if os.path.lexists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out: {out} is an existing file; name a folder")
    if os.path.isdir(out):
        others = sorted(set(os.listdir(out)) - EXPORT_FILES)
        others = [n for n in others if not re.fullmatch(r"translate_beams\d+\.bin", n)]
        if others:
            raise ConfigError(
                f"--out: {out} exists and is not an export (it holds {others[0]!r}); "
                "name a new folder"
            )
    return out


def start_export(out: str) -> str:
    """A temporary folder beside `out` (which proves --out writable before anything compiles)."""
    parent = os.path.dirname(out)
    try:
        os.makedirs(parent, exist_ok=True)
        temporary = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-", dir=parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o777 & ~umask)  # as os.makedirs would, not mkdtemp's 0700
        return temporary
    except OSError as error:
        raise ConfigError(f"--out: cannot write in {parent} ({error.strerror or error})") from None


def finish_export(temporary: str, out: str, files: dict, meta: dict) -> None:
    """files ({name: bytes or a writer(path)}) and export.json (with their SHA-256) into
    `temporary`, renamed to `out` once whole: an interrupted export leaves the earlier one as
    it was, never a mix of two (a killed one leaves only its hidden .partial- folder)."""
    digests = {}
    for name, content in files.items():
        path = os.path.join(temporary, name)
        if callable(content):
            content(path)
        else:
            with open(path, "wb") as f:
                f.write(content)
        digests[name] = serving.sha256(path)
    with open(os.path.join(temporary, "export.json"), "w", encoding="utf-8") as f:
        json.dump({**meta, "files": digests}, f, indent=1)
    for name in os.listdir(temporary):
        with open(os.path.join(temporary, name), "rb") as f:
            os.fsync(f.fileno())
    parent, old = os.path.dirname(out), None
    if os.path.isdir(out):  # an earlier export (check_out): set aside, then dropped
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=parent)
        os.rename(out, os.path.join(old, "export"))
    os.rename(temporary, out)
    if old:
        shutil.rmtree(old)


def main(argv):
    del argv
    config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    out = check_out(flags.FLAGS.out, workdir)
    try:
        beams = sorted({int(k) for k in flags.FLAGS.num_beams})
    except ValueError:
        raise ConfigError(f"--num_beams: {flags.FLAGS.num_beams} are not integers") from None
    if not beams or beams[0] < 1 or flags.FLAGS.batch < 0:
        raise ConfigError("--num_beams / --batch: beams must be >= 1 and batch >= 0")
    temporary = start_export(out)
    try:
        export(config, workdir, out, beams, temporary)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def export(config, workdir: str, out: str, beams: list[int], temporary: str) -> None:
    run = runs.load_run(config, workdir)
    if "translate" not in run.steps.predict_fns:
        raise ConfigError(
            f"--workdir: a {config.family!r} run, whose family does not translate; "
            "export takes translation (seq2seq) runs"
        )
    params = jax.device_get(run.state.eval_params)
    files = {}
    for k in beams:
        files[f"translate_beams{k}.bin"] = export_translate(run, params, k, flags.FLAGS.batch)
        print(f"exported: translate_beams{k}.bin")
    files["params.msgpack"] = serialization.msgpack_serialize(params)
    files["tokenizer.json"] = run.tokenizer.save
    meta = {
        "source_len": run.config.data.source_len,
        "eos_id": run.tokenizer.eos_id,
        "pad_id": pairs.pad_id(run.tokenizer),
        "batch": flags.FLAGS.batch,
        "num_beams": beams,
        "max_new_tokens": run.config.sample.max_new_tokens,
        "step": int(run.step),
    }
    finish_export(temporary, out, files, meta)
    print(f"export: {out} (step {run.step})")


if __name__ == "__main__":
    cli.define_workdir_config(__import__("sys").argv)
    cli.run(main)
