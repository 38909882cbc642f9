"""Bad input to experiments/*.py is one line on stderr and exit status 2, whichever script."""

import json
import pickle

import numpy as np
import pytest

from tests.e2e import SMOKE, run_script, stderr_lines
from tests.helpers import vae_smoke_config

pytestmark = pytest.mark.slow


def one_error_line(result) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = stderr_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


@pytest.fixture
def run_dir(tmp_path):
    """A workdir with the config.json of a smoke run (enough for the flags to parse)."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(vae_smoke_config().to_json_best_effort(indent=2))
    return workdir


@pytest.mark.parametrize(
    "script", ["train", "sample", "evaluate", "build_domain_network", "convert_inception"]
)
def test_a_stray_positional_argument_is_refused(script, run_dir, tmp_path):
    flags = {
        "train": [f"--config={SMOKE}", f"--workdir={tmp_path / 'new'}"],
        "sample": [f"--workdir={run_dir}"],
        "evaluate": [f"--workdir={run_dir}"],
        "build_domain_network": ["--dataset=mnist", "--smoke"],
        "convert_inception": [f"--torch_weights={tmp_path / 'w.npz'}", f"--out={tmp_path}/o"],
    }[script]
    line = one_error_line(run_script(script, *flags, "stray", check=False))
    assert "unexpected argument 'stray'" in line
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    "body, line, what",
    [
        ("def get_config(arg=''):\n    x = (1,\n    return x\n", 2, "SyntaxError"),
        ("import math\n\ndef get_config(arg=''):\n    return math.log(0)\n", 4, "ValueError"),
        ("def get_config(arg=''):\n    return {}['model']\n", 2, "KeyError"),
    ],
)
def test_an_error_inside_the_config_file_names_the_file_and_line(tmp_path, body, line, what):
    path = tmp_path / "my_config.py"
    path.write_text(body)
    result = run_script(
        "train", f"--config={path}:smoke", f"--workdir={tmp_path / 'run'}", check=False
    )
    message = one_error_line(result)
    assert message.startswith(f"error: --config: {path}, line ")
    assert f"line {line}: {what}" in message or (what == "SyntaxError" and what in message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("script", ["sample", "evaluate"])
@pytest.mark.parametrize("damage", ["truncated", "not_an_object", "binary"])
def test_a_damaged_config_json_names_the_file(run_dir, script, damage):
    path = run_dir / "config.json"
    text = path.read_text()
    content = {
        "truncated": text[: len(text) // 2].encode(),
        "not_an_object": b"[1, 2]",
        "binary": b"\xff\xfe\x00garbage",
    }[damage]
    path.write_bytes(content)
    line = one_error_line(run_script(script, f"--workdir={run_dir}", check=False))
    assert f"{path}" in line
    assert path.read_bytes() == content


def test_a_workdir_without_checkpoints_is_one_line(run_dir):
    line = one_error_line(run_script("sample", f"--workdir={run_dir}", check=False))
    assert "no readable checkpoint" in line and "none saved" in line


def test_convert_inception_missing_file_comes_before_needing_torch(tmp_path):
    missing = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    line = one_error_line(
        run_script(
            "convert_inception",
            f"--torch_weights={missing}",
            f"--out={tmp_path / 'out.npz'}",
            check=False,
        )
    )
    assert line == f"error: --torch_weights: no such file {str(missing)!r}"


@pytest.mark.parametrize("kind", ["object_array", "pickle_file"])
def test_convert_inception_refuses_pickled_npz(tmp_path, kind):
    path = tmp_path / "weights.npz"
    if kind == "object_array":
        np.savez(path, **{"Conv2d_1a_3x3.conv.weight": np.array([{"x": 1}], dtype=object)})
    else:
        path.write_bytes(pickle.dumps({"Conv2d_1a_3x3.conv.weight": np.zeros(3)}))
    line = one_error_line(
        run_script(
            "convert_inception",
            f"--torch_weights={path}",
            f"--out={tmp_path / 'out.npz'}",
            check=False,
        )
    )
    assert line.startswith(f"error: --torch_weights: {path}") and "pickled" in line
    assert not (tmp_path / "out.npz").exists()


def test_convert_inception_incomplete_state_dict_is_one_line(tmp_path):
    path = tmp_path / "weights.npz"
    np.savez(path, **{"Conv2d_1a_3x3.conv.weight": np.zeros((32, 3, 3, 3), np.float32)})
    line = one_error_line(
        run_script(
            "convert_inception",
            f"--torch_weights={path}",
            f"--out={tmp_path / 'out.npz'}",
            check=False,
        )
    )
    assert "missing from the Inception state dict" in line
    assert json.dumps(str(path))[1:-1] in line
