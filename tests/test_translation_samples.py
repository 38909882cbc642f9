"""experiments.sample on a translation (seq2seq) run: outputs named by a digest of the sources
and settings (never overwritten), a source_file translated config.sample.batch_size at a time
(the same translations as one batch), empty or non-UTF-8 sources as one-line errors.

The run is an untrained smoke run (tests/stages.py): translations are meaningless but
deterministic under beam search, which is all that is compared here.
"""

import pytest

from jaxgen.train import seq2seq
from tests.e2e import run_script, stderr_lines
from tests.helpers import load_config
from tests.stages import untrained_run

pytestmark = pytest.mark.slow

VERSES = [  # short enough for the smoke run's 24 source tokens
    "En el principio",
    "Y dijo Dios",
    "Sea la luz",
    "y fué la luz",
    "Y vió Dios",
    "que era buena",
    "Día y Noche",
    "Y fué la tarde",
    "y la mañana",
    "un día",
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seq2seq")
    return untrained_run(load_config("configs/seq2seq/bible_es_en.py", "smoke"), folder / "run")


def sample(workdir, *overrides, check=True):
    return run_script("sample", f"--workdir={workdir}", *overrides, check=check)


def outputs(result) -> dict[str, str]:
    """{"source": path, "translation": path} printed by experiments.sample."""
    paths = [line for line in result.stdout.splitlines() if line.endswith(".txt")]
    return {
        name: path for path in paths for name in ("source", "translation") if f"/{name}_" in path
    }


def lines(path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def test_a_file_in_batches_translates_as_one_batch_and_never_overwrites(workdir, tmp_path):
    source_file = tmp_path / "verses.txt"
    source_file.write_text("\n".join(VERSES[:3] + [""] + VERSES[3:]) + "\n", encoding="utf-8")
    # 10 verses 4 at a time: 3 batches, the last padded with 2 copies of its last verse.
    batched = sample(workdir, f"--config.sample.source_file={source_file}")
    assert "sample: 100%" in batched.stderr and "3/3" in batched.stderr  # the progress bar
    files = outputs(batched)
    assert lines(files["source"]) == VERSES
    translations = lines(files["translation"])
    assert len(translations) == len(VERSES)
    whole = sample(
        workdir, f"--config.sample.source={'|'.join(VERSES)}", "--config.sample.batch_size=12"
    )
    assert outputs(whole)["translation"] != files["translation"]  # other settings: another file
    assert lines(outputs(whole)["translation"]) == translations  # beams: batching changes nothing
    assert lines(files["translation"]) == translations  # the first output is still there
    again = sample(workdir, f"--config.sample.source_file={source_file}")
    assert outputs(again) == files  # the same call names the same files
    one = sample(workdir, f"--config.sample.source={VERSES[4]}")
    assert lines(outputs(one)["translation"]) == translations[4:5]
    assert lines(files["translation"]) == translations and lines(files["source"]) == VERSES


def test_file_names_follow_every_setting_and_the_sources(workdir):
    config = load_config("configs/seq2seq/bible_es_en.py", "smoke").sample
    config.source = "hola"
    tags = {seq2seq.sample_tag(config)}
    for field, value in [("num_beams", 1), ("length_penalty", 1.0), ("source", "hola|adiós")]:
        changed = config.copy_and_resolve_references()
        changed[field] = value
        tags.add(seq2seq.sample_tag(changed))
    assert len(tags) == 4 and all(tag.startswith("_seed0_") for tag in tags)


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.sample.source=", "config.sample.source: given empty"),
        ("--config.sample.source_file=", "config.sample.source_file: given empty"),
        ("--config.sample.source=| |", "config.sample.source: no text in '| |'"),
        ("--config.sample.source=hol\udce1", "config.sample.source: not UTF-8 text"),
        ("--config.sample.batch_size=0", "config.sample.batch_size: must be a positive multiple"),
    ],
)
def test_empty_or_undecodable_sources_are_one_line(workdir, override, message):
    result = sample(workdir, override, check=False)
    assert result.returncode == 2 and len(stderr_lines(result)) == 1, result.stderr[-2000:]
    assert message in result.stderr


def test_a_source_file_that_is_not_utf8_is_one_line(workdir, tmp_path):
    source_file = tmp_path / "latin1.txt"
    source_file.write_bytes("Y vió Dios la luz\n".encode("latin-1"))
    result = sample(workdir, f"--config.sample.source_file={source_file}", check=False)
    assert result.returncode == 2 and len(stderr_lines(result)) == 1, result.stderr[-2000:]
    assert f"{source_file} is not UTF-8 text" in result.stderr


def test_the_training_loop_writes_the_real_rows_of_the_first_batch(workdir, tmp_path):
    """The loop samples rundir.sample_batch (the first of Steps.sample_batches) with
    rundir.write_samples: 3 sources in a batch of 4 write 3 lines, not the padding row."""
    import jax

    from jaxgen import rundir, runs
    from jaxgen.config import load_workdir_config

    config = load_workdir_config(workdir)
    config.sample.source = "|".join(VERSES[:3])
    run = runs.load_run(config, workdir)
    host = rundir.sample_batch(run.config, run.steps)
    assert host["keep"].tolist() == [True, True, True, False]
    sample = run.placement.compile_eval(run.steps.sample)
    batch = run.placement.put_batch(host, backend="jit")
    paths = rundir.write_samples(
        sample, run.state, batch, jax.random.PRNGKey(0), str(tmp_path), 7,
        config=run.config, family=run.family,
    )  # fmt: skip
    source = next(path for path in paths if "source_" in path)
    assert lines(source) == VERSES[:3]
