"""python -m experiments.fid: pytorch-fid's algorithm with the standard weights, its stats files,
KID, and one-line errors. The reference is pytorch-fid's code run with the wheel's TorchScript
network (golden features and FID from tests/fixtures/make_fid_fixture.py) and a NumPy/SciPy
transcription of its Fréchet distance here."""

import re

import numpy as np
import pytest
from PIL import Image
from scipy import linalg

from tests.e2e import run_script, stderr_lines
from tests.fixtures.make_fid_fixture import write_folders
from tests.helpers import ROOT
from tests.test_inception_weights import wheel_weights  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow  # every test runs experiments.fid in subprocesses

GOLDEN = ROOT / "tests" / "fixtures" / "fid_inception.npz"


def pytorch_fid_distance(a: np.ndarray, b: np.ndarray) -> float:
    """pytorch-fid's calculate_frechet_distance on features a [N, D], b [M, D]."""
    mu1, mu2 = a.mean(0), b.mean(0)
    sigma1, sigma2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(mu1)) * 1e-6
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean.real))


def unbiased_cubic_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """KID's MMD^2 with k(a, b) = (a.b / d + 1)^3, written out pair by pair."""
    kernel = lambda a, b: (a @ b / len(a) + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(kernel(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(kernel(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(kernel(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def printed(result, name: str) -> float:
    match = re.search(rf"^{name}: (\S+)", result.stdout, re.MULTILINE)
    assert match, result.stdout + result.stderr[-2000:]
    return float(match.group(1))


def test_folders_give_pytorch_fids_value_with_the_wheel_weights(wheel_weights, tmp_path):  # noqa: F811
    golden = np.load(GOLDEN)
    features_a, features_b = golden["folder_a"].astype(np.float64), golden["folder_b"]
    features_b = features_b.astype(np.float64)
    expected = pytorch_fid_distance(features_a, features_b)
    np.testing.assert_allclose(expected, golden["fid_ab"], rtol=1e-6)  # the fixture's own run
    folder_a, folder_b = write_folders(str(tmp_path))  # 8 PNGs each, two sizes
    weights = f"--weights={wheel_weights}"
    result = run_script("fid", folder_a, folder_b, "--kid", "--batch_size=3", weights)
    np.testing.assert_allclose(printed(result, "FID"), expected, rtol=1e-3)
    # Subsets of all 8 rows: every subset is the whole set, so KID is one MMD^2 (std 0).
    np.testing.assert_allclose(
        printed(result, "KID"), unbiased_cubic_mmd(features_a, features_b), rtol=1e-3, atol=1e-6
    )
    # Stats of a folder, then FID against pytorch-fid-style stats of the other: no network.
    run_script("fid", folder_a, f"--save_stats={tmp_path}/a.npz", weights)
    with np.load(tmp_path / "a.npz") as saved:
        np.testing.assert_allclose(saved["mu"], features_a.mean(0), atol=1e-4)
        np.testing.assert_allclose(saved["sigma"], np.cov(features_a, rowvar=False), atol=1e-4)
    np.savez(tmp_path / "b.npz", mu=features_b.mean(0), sigma=np.cov(features_b, rowvar=False))
    result = run_script("fid", f"{tmp_path}/a.npz", f"{tmp_path}/b.npz")
    np.testing.assert_allclose(printed(result, "FID"), expected, rtol=1e-3)


def one_line(result) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = stderr_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


def write_images(folder, count):
    folder.mkdir(exist_ok=True)
    for index in range(count):
        Image.fromarray(np.full((8, 8), index * 40, np.uint8)).save(folder / f"{index}.png")
    return folder


def test_bad_input_is_one_line_before_any_network(tmp_path):
    """Each bad input names its path; the weights given do not exist, so none is loaded."""
    good = str(write_images(tmp_path / "good", 3))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    single = str(write_images(tmp_path / "single", 1))
    broken = write_images(tmp_path / "broken", 2)
    (broken / "2.png").write_bytes(b"not a png")
    np.savez(tmp_path / "stats.npz", mean=np.zeros(3))
    weights = f"--weights={tmp_path}/none.npz"
    cases = [
        ([good, str(empty)], f"{empty}: no images"),
        ([single, good], f"{single}: 1 image; FID needs at least 2"),
        ([good, str(broken)], f"{broken / '2.png'}: unreadable image"),
        ([good, f"{tmp_path}/stats.npz"], "stats.npz: a statistics file holds arrays 'mu'"),
        ([good, f"{tmp_path}/nowhere"], "nowhere: no such folder or file"),
        ([good], "expected 2 path(s)"),
        ([good, f"{tmp_path}/stats.npz", "--kid"], "--kid: needs features"),
        ([good, "data:mnist"], "data:mnist: write a dataset split as data:<dataset>:<split>"),
        ([good, good], f"--weights: no such file '{tmp_path}/none.npz'"),
    ]
    for args, expected in cases:
        line = one_line(run_script("fid", *args, weights, check=False))
        assert expected in line, (args, line)


def test_missing_weights_say_how_to_get_them(tmp_path):
    good = str(write_images(tmp_path / "good", 2))
    env = {"JAXGEN_CACHE_DIR": str(tmp_path / "cache"), "JAXGEN_INCEPTION_WEIGHTS": ""}
    line = one_line(run_script("fid", good, good, check=False, env=env))
    assert line.startswith("error: --weights: the inception network needs its weights")
    assert "python -m experiments.convert_inception --download" in line


def test_dataset_splits_and_folders_mix_in_process(tmp_path, monkeypatch, capsys):
    """data:<dataset>:<split>:N beside a folder, with a 3-feature stand-in for the Inception
    (the route, not the network: the wheel tests above check that)."""
    import jax.numpy as jnp
    from absl import flags
    from absl.testing import flagsaver

    from experiments import fid as fid_script
    from jaxgen.metrics import networks

    def features(params, images):  # [B, H, W, C] in [-1, 1] -> [B, 3]
        del params
        rows = [images.mean((1, 2, 3)), images.std((1, 2, 3)), images[:, :4, :4].mean((1, 2, 3))]
        return jnp.stack(rows, -1), jnp.zeros((images.shape[0], 0))

    fake = networks.FeatureNetwork("fake", {}, features, None, 0, str(tmp_path), "fake")
    monkeypatch.setattr(fid_script.inception_weights, "resolve_weights", lambda path, field: path)
    monkeypatch.setattr(fid_script.inception_weights, "load", lambda path, field: fake)
    # Set this script's flags alone: parsing the whole of FLAGS would also check the required
    # flags of every other script a test imported into this process.
    flags.FLAGS.mark_as_parsed()
    with flagsaver.flagsaver(batch_size=16):
        fid_script.main(["fid", "data:mnist:test:64", "data:mnist:test:64"])
        assert abs(printed_line(capsys, "FID")) < 1e-6
        folder = write_images(tmp_path / "grey", 5)
        fid_script.main(["fid", "data:mnist:test:64", str(folder)])
    value = printed_line(capsys, "FID")
    # The folder's features in NumPy from the PNGs; the split's from the statistics cache.
    pixels = [
        np.asarray(Image.open(folder / f"{i}.png").convert("RGB")) / 255 * 2 - 1 for i in range(5)
    ]
    rows = np.array([[p.mean(), p.std(), p[:4, :4].mean()] for p in pixels])
    with np.load(tmp_path / "stats" / "mnist_test_first64_fake.npz") as cached:
        expected = pytorch_fid_distance(np.asarray(cached["features"], np.float64), rows)
    np.testing.assert_allclose(value, expected, rtol=1e-4)


def printed_line(capsys, name: str) -> float:
    match = re.search(rf"^{name}: (\S+)", capsys.readouterr().out, re.MULTILINE)
    assert match
    return float(match.group(1))
