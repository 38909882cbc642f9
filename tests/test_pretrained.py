"""jaxgen.pretrained, the seam for published weights: reading tensors (no torch), taking each by
name with its shape checked, and writing a complete run from params with no dataset; and that a
run written so is a stage a latent diffusion run can name (an imported autoencoder that declares
its scale factor).
"""

import re

import jax
import numpy as np
import pytest
import safetensors.numpy

from jaxgen import pretrained, rundir, runs
from jaxgen.config import ConfigError, load_workdir_config
from jaxgen.family import get_family
from jaxgen.train import latent_stages
from tests.helpers import ROOT, load_config, tree_snapshot
from tests.stages import untrained_run


def test_tensors_are_taken_once_with_their_shape_and_named_when_not(tmp_path):
    path = tmp_path / "model.safetensors"
    weights = {
        "a.weight": np.arange(6, dtype=np.float16).reshape(2, 3),
        "b": np.ones(4, np.float32),
    }
    safetensors.numpy.save_file(weights, str(path))
    read, origin = pretrained.read_weights(str(tmp_path), "model.safetensors", "model.bin")
    assert origin == str(path) and read["a.weight"].dtype == np.float16  # as stored
    tensors = pretrained.Tensors(read, origin)
    np.testing.assert_array_equal(tensors.take("a.weight", (2, 3)), weights["a.weight"])
    with pytest.raises(pretrained.WeightError, match=rf"^{origin}: missing a\.weight$"):
        tensors.take("a.weight", (2, 3))  # taken already
    with pytest.raises(
        pretrained.WeightError, match=r"b has shape \(4,\), the model needs \(2, 2\)"
    ):
        tensors.take("b", (2, 2))
    left = pretrained.Tensors({"x": np.zeros(1), "h.0.attn.bias": np.zeros(1)}, "f")
    left.check_all_taken(ignore=("attn.bias", "x"))
    with pytest.raises(pretrained.WeightError, match="^f: unexpected weights x$"):
        left.check_all_taken(ignore=("attn.bias",))
    with pytest.raises(pretrained.WeightError, match="no model.safetensors or model.bin"):
        pretrained.read_weights(str(tmp_path / "nowhere"), "model.safetensors", "model.bin")


def autoencoder_run_parts(seed: int = 1):
    """(config, params, info) of a smoke autoencoder whose params are not its init's."""
    config = load_config("configs/autoencoder/mnist.py", "smoke")
    info = rundir.check_config(config)
    steps = get_family("autoencoder").make_steps(config, info, None)
    state = jax.jit(steps.init)(jax.random.PRNGKey(seed), rundir.example_batch(steps))
    params = jax.tree.map(lambda p: np.asarray(p) + 0.25, state.params)
    return config, params, info


def test_write_run_writes_a_run_that_loads_with_exactly_those_params(tmp_path):
    config, params, info = autoencoder_run_parts()
    workdir = tmp_path / "imported"
    pretrained.write_run(config, params, str(workdir), info=info)
    assert sorted(p.name for p in workdir.iterdir()) == [
        "checkpoints", "config.json", "data_info.json",
    ]  # fmt: skip
    assert [p.name for p in tmp_path.iterdir()] == ["imported"]  # no building folder left
    run = runs.load_run(load_workdir_config(str(workdir)), str(workdir))
    assert run.step == 0 and run.info == info
    jax.tree.map(np.testing.assert_array_equal, run.state.params, params)
    jax.tree.map(np.testing.assert_array_equal, run.state.eval_params, params)  # the EMA too
    with pytest.raises(ConfigError, match="already holds a run"):
        pretrained.write_run(config, params, str(workdir), info=info)


def test_write_run_checks_params_and_config_before_writing(tmp_path):
    config, params, info = autoencoder_run_parts()
    bad = jax.tree.map(lambda p: p, params)
    name, leaf = next(iter(bad["encoder"].items()))
    kernel = leaf["kernel"]
    leaf["kernel"] = np.zeros(kernel.shape[:-1] + (kernel.shape[-1] + 1,), np.float32)
    with pytest.raises(
        pretrained.WeightError, match=rf"params\['encoder'\]\['{name}'\]\['kernel'\] has shape"
    ):
        pretrained.write_run(config, bad, str(tmp_path / "a"), info=info, origin="weights.bin")
    del bad["encoder"][name]
    with pytest.raises(pretrained.WeightError, match=rf"\['{name}'\]\['bias'\]: missing"):
        pretrained.write_run(config, bad, str(tmp_path / "a"), info=info)
    config.train.batch_size = 0
    with pytest.raises(ConfigError, match="config.train.batch_size"):
        pretrained.write_run(config, params, str(tmp_path / "a"), info=info)
    assert not list(tmp_path.iterdir())  # a failed import leaves nothing, no hidden folder


@pytest.mark.parametrize(
    "kind, message",
    [
        ("int8", r"params\['encoder'\]\['\w+'\]\['kernel'\] holds int8 values, not floating"),
        ("nan", r"params\['encoder'\]\['\w+'\]\['kernel'\] holds \d+ NaN or infinite values"),
        ("inf", r"params\['encoder'\]\['\w+'\]\['kernel'\] holds 1 NaN or infinite values"),
    ],
)
def test_write_run_refuses_integer_or_non_finite_params_naming_them(tmp_path, kind, message):
    config, params, info = autoencoder_run_parts()
    leaf = next(iter(params["encoder"].values()))
    if kind == "int8":
        leaf["kernel"] = np.ones(leaf["kernel"].shape, np.int8)
    else:
        leaf["kernel"] = leaf["kernel"].copy()
        leaf["kernel"].flat[0 if kind == "inf" else slice(None)] = (
            np.inf if kind == "inf" else np.nan
        )
    with pytest.raises(pretrained.WeightError, match=message):
        pretrained.write_run(config, params, str(tmp_path / "a"), info=info, origin="w.bin")
    assert not list(tmp_path.iterdir())


def test_tensors_refuse_integer_and_non_finite_tensors_naming_them():
    tensors = pretrained.Tensors(
        {"a": np.ones((2,), np.int8), "b": np.array([1.0, np.nan], np.float16)}, origin="m.st"
    )
    with pytest.raises(pretrained.WeightError, match="m.st: a holds int8 values, not floating"):
        tensors.take("a", (2,))
    with pytest.raises(pretrained.WeightError, match="m.st: b holds 1 NaN or infinite values"):
        tensors.take("b", (2,))


def hold_lock(workdir):
    """A process holding workdir's lock as a trainer does, until killed."""
    import subprocess
    import sys

    code = (
        "import sys, time\nfrom jaxgen.workdir import lock_workdir\n"
        "with lock_workdir(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(600)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(workdir)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert process.stdout.readline().strip() == "locked"
    return process


@pytest.mark.parametrize(
    "existing, message",
    [
        ({"config.json": "{}"}, "already holds a run (config.json)"),
        ({"checkpoints_unreadable/5/x": "x", "tokenizer.json": "t"}, "(checkpoints_unreadable)"),
        ({"tokenizer.json": "trained"}, "already holds files (tokenizer.json)"),
        ({".lock": ""}, "already holds files (.lock)"),
        ("a file", "is a file, not a folder"),
        ("locked", "is being trained (its .lock is held)"),
    ],
)
def test_write_run_never_touches_an_existing_folder(tmp_path, existing, message):
    config, params, info = autoencoder_run_parts()
    workdir, holder = tmp_path / "w", None
    if existing == "a file":
        workdir.write_text("notes")
    elif existing == "locked":
        holder = hold_lock(workdir)
    else:
        for name, text in existing.items():
            (workdir / name).parent.mkdir(parents=True, exist_ok=True)
            (workdir / name).write_text(text)
    before = tree_snapshot(tmp_path)
    try:
        with pytest.raises(ConfigError, match=re.escape(message)):
            pretrained.write_run(config, params, str(workdir), info=info)
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    assert tree_snapshot(tmp_path) == before  # nothing written, nothing changed


def test_write_run_into_an_empty_folder(tmp_path):
    config, params, info = autoencoder_run_parts()
    (tmp_path / "w").mkdir()
    pretrained.write_run(config, params, str(tmp_path / "w"), info=info)
    assert (tmp_path / "w" / "config.json").exists() and len(list(tmp_path.iterdir())) == 1


def test_an_imported_autoencoder_is_a_stage_with_its_declared_scale_factor(tmp_path):
    config, params, info = autoencoder_run_parts()
    config.model.scale_factor = 0.25  # as an imported VAE declares (SD's 0.18215)
    pretrained.write_run(config, params, str(tmp_path / "ae"), info=info)  # no metrics.jsonl
    clip = untrained_run(load_config("configs/clip/mnist.py", "smoke"), tmp_path / "clip")
    ldm = load_config("configs/latent_diffusion/mnist.py", "smoke")
    ldm.model.autoencoder, ldm.model.text_encoder = str(tmp_path / "ae"), clip
    rundir.check_config(ldm)
    resolved = latent_stages.resolve(ldm)
    assert resolved.model.stages.autoencoder.scale_factor == 0.25
    assert tuple(resolved.model.stages.autoencoder.model.channels) == tuple(config.model.channels)
    frozen = latent_stages.load_frozen(resolved)
    jax.tree.map(np.testing.assert_array_equal, frozen["autoencoder"], params)
    assert float(frozen["scale_factor"]) == 0.25
    assert rundir.load_info(str(tmp_path / "ae")) == info
