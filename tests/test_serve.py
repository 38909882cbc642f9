"""experiments/export and experiments/serve as a hostile user meets them: the server over real
HTTP on 127.0.0.1 (a subprocess on a free port, serving an export of a smoke translation run),
every loop bounded.

Each bad request gets a JSON 4xx naming what is wrong and the server keeps serving; 40 parallel
clients are all answered, batched, each as it would be alone; 30 stalled half-sent requests are
answered 408 at the timeout; a damaged export folder or a bad flag is one line, exit 2; an
export is written whole or not at all.
"""

import concurrent.futures
import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
import time

import jax
import numpy as np
import pytest
from flax import serialization

from jaxgen import serving
from tests.e2e import command, run_script, script_env, stderr_lines
from tests.helpers import ROOT, SHARED_DATA

pytestmark = pytest.mark.slow
SMOKE = "configs/seq2seq/bible_es_en.py:smoke"
TIMEOUT = 2  # --timeout of the test server, seconds
SOURCES = ["En el principio crió Dios los cielos", "Y dijo Dios", "Sea la luz", "Y fué la tarde"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    data_args = []
    if not (SHARED_DATA / "bible_es_en.tsv").exists():
        path = tmp_path_factory.mktemp("pairs") / "pairs.tsv"
        rows = (f"v{i}\tEn el principio {i}\tIn the beginning {i}\n" for i in range(2000))
        path.write_text("id\tes\ten\n" + "".join(rows), encoding="utf-8")
        data_args = ["--config.data.name=tsv", f"--config.data.text_file={path}"]
    workdir = tmp_path_factory.mktemp("seq2seq_smoke")
    run_script("train", f"--config={SMOKE}", f"--workdir={workdir}", *data_args)
    return workdir


@pytest.fixture(scope="module")
def export(workdir, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "export"
    run_script("export", f"--workdir={workdir}", f"--out={out}", "--num_beams=1,2")
    return out


def start_server(export, *args, stderr=subprocess.DEVNULL):
    """A server subprocess on a free port; returns (process, port) once it listens."""
    process = subprocess.Popen(
        command("serve", f"--export={export}", "--port=0", *args),
        cwd=ROOT,
        env=script_env(),
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    line = process.stdout.readline()  # "serving E on http://127.0.0.1:PORT/translate"
    if not line:
        process.wait(timeout=30)
        raise AssertionError(f"serve exited {process.returncode} before listening")
    return process, int(line.split(":")[-1].split("/")[0])


@pytest.fixture(scope="module")
def server(export, tmp_path_factory):
    folder = tmp_path_factory.mktemp("server")
    console, log = folder / "console.txt", folder / "serve.log"
    with open(console, "w") as stderr:
        process, port = start_server(
            export, f"--timeout={TIMEOUT}", "--max_batch=8", f"--log={log}", stderr=stderr
        )
    try:
        yield port, console, log
    finally:
        process.terminate()
        process.wait(timeout=30)


def exchange(port: int, data: bytes, half_close: bool = False, wait: float = 30):
    """Send raw bytes; the reply's (status, JSON body, seconds), read by its Content-Length.
    No reply (a reset, or the connection closed without one) raises."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(65536)
            assert chunk, f"no reply to {data[:80]!r}"
            reply += chunk
        head, body = reply.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        length = int(headers["content-length"])
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk, f"a reply cut short: {reply!r}"
            body += chunk
    assert headers["content-type"].startswith("application/json"), headers
    return int(lines[0].split()[1]), json.loads(body), time.monotonic() - started


def post(port: int, body, headers: str = "") -> bytes:
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")
    head = f"POST /translate HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
    return exchange(port, head.encode() + body)


def translate(port: int, sources, num_beams: int = 1) -> list[str]:
    status, reply, _ = post(port, json.dumps({"source": sources, "num_beams": num_beams}))
    assert status == 200, reply
    return reply["translation"]


BAD_BODIES = [
    ('{"source": ["a"], "num_beams": [4]}', '"num_beams": [4] (list)'),
    ('{"source": ["a"], "num_beams": {}}', '"num_beams": {} (dict)'),
    ('{"source": ["a"], "num_beams": 4.0}', '"num_beams": 4.0 (float)'),
    ('{"source": ["a"], "num_beams": 1.0}', '"num_beams": 1.0 (float)'),
    ('{"source": ["a"], "num_beams": true}', '"num_beams": true (bool)'),
    ('{"source": ["a"], "num_beams": "1"}', '"num_beams": "1" (str)'),
    ('{"source": ["a"], "num_beams": null}', '"num_beams": null (NoneType)'),
    ('{"source": ["a"], "num_beams": 0}', '"num_beams": 0; exported: [1, 2]'),
    ('{"source": ["a"], "num_beams": -1}', '"num_beams": -1; exported: [1, 2]'),
    ('{"source": ["a"], "num_beams": ' + "9" * 5000 + "}", '"num_beams": an integer of 5000'),
    ('{"source": ["a"], "num_beams": 1e400}', '"num_beams": '),
    (
        '{"source": ["a"], "temperature": 0.5, "max_new_tokens": 3}',
        '"temperature", "max_new_tokens"',
    ),
    ('{"source": ["\\ud800"]}', '"source"[0]: not valid Unicode'),
    ('{"source": ["ok", "\\udfff tail"]}', '"source"[1]: not valid Unicode'),
    ('{"source": ["ok", 5]}', '"source"[1]: 5 (int)'),
    ('{"source": ["ok", "  "]}', '"source"[1]'),
    ('{"source": []}', '"source": must be a non-empty list'),
    ('{"source": ' + json.dumps(["a"] * 257) + "}", '"source": 257 rows'),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"a": ' * 100_000 + "1" + "}" * 100_000, "nested too deeply"),
    ('{"source": ["a"], "num_beams": NaN}', "NaN is not a JSON value"),
    ("[1, 2]", "must be a JSON object"),
    ("not json", "not UTF-8 JSON"),
    (b'{"source": ["\xed\xa0\x80"]}', "not UTF-8 JSON"),  # a surrogate encoded as bytes
    (b'{"source": ["\xff"]}', "not UTF-8 JSON"),
]


@pytest.mark.parametrize("body, reason", BAD_BODIES, ids=range(len(BAD_BODIES)))
def test_a_bad_request_body_gets_a_400_naming_the_field(server, body, reason):
    port, _, _ = server
    status, reply, _ = post(port, body)
    assert status == 400 and reason in reply["error"], reply
    assert "\n" not in reply["error"]


HEAD = "POST /translate HTTP/1.1\r\nHost: t\r\n"
BAD_MESSAGES = [  # (bytes, half-close, status, reason)
    (HEAD + "Content-Length: abc\r\n\r\n{}", False, 400, "bad Content-Length"),
    (HEAD + "Content-Length: -5\r\n\r\n{}", False, 400, "bad Content-Length"),
    # ... with 4 MiB behind it: closed at once with those unread, the reply would be reset away
    (HEAD + "Content-Length: abc\r\n\r\n" + "x" * (4 << 20), False, 400, "bad Content-Length"),
    (HEAD + "Content-Length: 1\r\nContent-Length: 2\r\n\r\n{}", False, 400, "Content-Length"),
    (HEAD + "Content-Length: 1000000000000000\r\n\r\n{}", False, 413, "at most 1048576"),
    (HEAD + "Content-Length: 50\r\n\r\n{}", True, 400, "input ended mid-request"),
    (HEAD + "Content-Length: 50\r\n\r\n{}", False, 408, f"within {TIMEOUT} s"),
    (HEAD + "Transfer-Encoding: chunked\r\n\r\n5\r\n{}", False, 408, f"within {TIMEOUT} s"),
    (HEAD, False, 408, f"within {TIMEOUT} s"),  # headers never end
    (HEAD + "X: " + "a" * 70_000, False, 431, "bad HTTP request"),  # headers over 16 KiB
    ("GET /health\r\n", False, 400, "not HTTP/1.x"),  # HTTP/0.9
    ("GET /\r\n", True, 400, "not HTTP/1.x"),
    ("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n", False, 400, "not HTTP/1.x"),  # TLS
    ("GET /translate HTTP/1.1\r\nHost: t\r\n\r\n", False, 405, "GET /translate"),
    ("GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n", False, 404, "no such path /nowhere"),
]


@pytest.mark.parametrize(
    "data, half_close, status, reason", BAD_MESSAGES, ids=range(len(BAD_MESSAGES))
)
def test_a_bad_http_message_gets_a_json_4xx(server, data, half_close, status, reason):
    port, _, _ = server
    got, reply, seconds = exchange(port, data.encode("latin-1"), half_close)
    assert got == status and reason in reply["error"], (got, reply)
    assert seconds < TIMEOUT + 10


def test_a_body_over_the_limit_gets_a_413_and_no_reset(server):
    """The server reads and drops the unread body: closing on it would reset the reply away."""
    port, _, _ = server
    status, reply, _ = post(port, json.dumps({"source": ["a" * (2 << 20)]}))
    assert status == 413 and "at most 1048576" in reply["error"]
    chunked = b'{"source": ["' + b"a" * (1100 << 10) + b'"]}'
    head = HEAD + "Transfer-Encoding: chunked\r\n\r\n"
    status, reply, _ = exchange(
        port, head.encode() + b"%x\r\n" % len(chunked) + chunked + b"\r\n0\r\n\r\n"
    )
    assert status == 413 and "over 1048576 bytes" in reply["error"]


def test_forty_parallel_clients_are_answered_batched_each_as_alone(server):
    port, _, _ = server
    alone = {k: translate(port, SOURCES, num_beams=k) for k in (1, 2)}  # row by row equal below
    _, before, _ = exchange(port, b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
    jobs = [(SOURCES[i % 4], 1 + i % 2) for i in range(40)]
    barrier = threading.Barrier(40, timeout=60)  # all connect at once: the backlog's test

    def client(job):
        barrier.wait()
        return translate(port, [job[0]], job[1])

    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        replies = list(pool.map(client, jobs))
    for (source, k), reply in zip(jobs, replies, strict=True):
        assert reply == [alone[k][SOURCES.index(source)]]
    _, after, _ = exchange(port, b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
    assert after["rows"] - before["rows"] == 40
    assert after["batches"] - before["batches"] < 40  # batched: fewer batches than requests


def test_thirty_stalled_connections_are_released_by_the_timeout(server):
    port, _, _ = server
    halves = [HEAD.encode(), (HEAD + 'Content-Length: 50\r\n\r\n{"sou').encode()]
    started = time.monotonic()
    sockets = []
    try:
        for i in range(30):
            sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT + 20)
            sock.sendall(halves[i % 2])
            sockets.append(sock)
        assert translate(port, SOURCES[:1])  # served meanwhile
        for sock in sockets:
            reply = b""
            while chunk := sock.recv(4096):  # bounded by the socket timeout
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 408 ") and b'"error"' in reply, reply
    finally:
        for sock in sockets:
            sock.close()
    assert time.monotonic() - started < TIMEOUT + 20


def test_the_console_has_no_traceback(server):
    _, console, log = server
    text = console.read_text()
    assert "Traceback" not in text and "Started server process" in text
    assert log.is_file()


def test_an_unexpected_error_is_a_500_json_and_its_traceback_goes_to_the_log(tmp_path, capfd):
    """A translate function that raises, served for real over HTTP in this process."""

    class Broken:
        functions, max_rows = {1: None}, 4

        def translate(self, texts, num_beams):
            raise RuntimeError("the device fell over")

    log = tmp_path / "serve.log"
    loggers = [serving.LOGGER, "uvicorn.error", "uvicorn.access"]
    saved = {name: list(serving.logging.getLogger(name).handlers) for name in loggers}
    serving.configure_logging(str(log))
    server = serving.make_server(
        serving.make_app(Broken(), max_rows=4, max_body=1 << 20), timeout=TIMEOUT, backlog=16
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(100):  # bounded wait for start-up
            if server.started:
                break
            time.sleep(0.1)
        status, reply, _ = post(sock.getsockname()[1], '{"source": ["a"]}')
        assert status == 500 and "RuntimeError" in reply["error"] and "\n" not in reply["error"]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        for name, handlers in saved.items():
            serving.logging.getLogger(name).handlers[:] = handlers
    text = log.read_text()
    assert "Traceback" in text and "the device fell over" in text
    assert "Traceback" not in capfd.readouterr().err


def one_line_exit_2(result, *needles):
    lines = stderr_lines(result)
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and all(n in lines[0] for n in needles), lines


def serve_once(*args):
    return subprocess.run(
        command("serve", *args), cwd=ROOT, env=script_env(), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def damaged_copy(export, tmp_path, name, content=None, redigest=True, remove=()):
    """A copy of `export` with file `name` replaced by `content` (and export.json's digest of it
    updated, to reach the checks behind the digest), or files removed."""
    folder = tmp_path / "damaged"
    folder.mkdir()
    for file in export.iterdir():
        if file.name not in remove and file.name != "serve.log":
            (folder / file.name).write_bytes(file.read_bytes())
    if content is not None:
        (folder / name).write_bytes(content)
        if redigest and name != "export.json":
            meta = json.loads((folder / "export.json").read_text())
            meta["files"][name] = digest(folder / name)
            (folder / "export.json").write_text(json.dumps(meta))
    return folder


def wrong_shape_params(export) -> bytes:
    params = serialization.msgpack_restore((export / "params.msgpack").read_bytes())
    leaves = jax.tree.leaves_with_path(params)
    path, leaf = leaves[0]
    node = params
    for key in path[:-1]:
        node = node[key.key]
    node[path[-1].key] = np.zeros((*leaf.shape[:-1], leaf.shape[-1] + 1), leaf.dtype)
    return serialization.msgpack_serialize(params)


DAMAGES = {  # name: (file, content or callable(export), redigest, removed, what the line says)
    "params_wrong_shape": ("params.msgpack", wrong_shape_params, True, (), "takes float32"),
    "params_empty": ("params.msgpack", b"", True, (), "params.msgpack: not a params file"),
    "params_empty_map": ("params.msgpack", b"\x80", True, (), "holds no params"),
    "params_other": ("params.msgpack", b"\x80", False, (), "SHA-256 differs"),
    "bin_truncated": ("translate_beams2.bin", lambda e: (e / "translate_beams2.bin").read_bytes()[:500], True, (), "translate_beams2.bin: not a jax.export"),
    "bin_garbage": ("translate_beams1.bin", b"\x00" * 64, True, (), "translate_beams1.bin: not a jax.export"),
    "bins_swapped": ("translate_beams1.bin", lambda e: (e / "translate_beams2.bin").read_bytes(), False, (), "SHA-256 differs"),
    "tokenizer_garbage": ("tokenizer.json", b"{garbage", True, (), "tokenizer.json: not a tokenizer"),
    "meta_list": ("export.json", b"[]", True, (), "a JSON list"),
    "meta_torn": ("export.json", b'{"source_len": 2', True, (), "export.json: cannot read it"),
    "meta_no_digests": ("export.json", lambda e: json.dumps({k: v for k, v in json.loads((e / "export.json").read_text()).items() if k != "files"}).encode(), True, (), "no files"),
    "meta_bad_length": ("export.json", lambda e: json.dumps({**json.loads((e / "export.json").read_text()), "source_len": 7}).encode(), True, (), "export.json says batch 0, source_len 7"),
    "killed_after_first_bin": (None, None, True, ("export.json", "params.msgpack", "tokenizer.json", "translate_beams2.bin"), "export.json: cannot read it"),
    "a_bin_missing": (None, None, True, ("translate_beams2.bin",), "translate_beams2.bin: cannot read it"),
}  # fmt: skip


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_serve_refuses_a_damaged_export_with_one_line(export, tmp_path, damage):
    name, content, redigest, remove, reason = DAMAGES[damage]
    if callable(content):
        content = content(export)
    folder = damaged_copy(export, tmp_path, name, content, redigest, remove)
    one_line_exit_2(serve_once(f"--export={folder}", "--port=0"), "--export:", reason)


def test_serve_refuses_bad_flags_with_one_line(export, tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        one_line_exit_2(
            serve_once(f"--export={export}", f"--port={port}"), "--host/--port:", "in use"
        )
    finally:
        taken.close()
    for flag, reason in [
        ("--port=-1", "--port: -1 is not in"),
        ("--port=65536", "--port: 65536 is not in"),
        ("--port=http", "--port: 'http' is not a number"),
        ("--host=no-such-host.invalid", "--host: cannot resolve"),
        ("--timeout=0", "--timeout"),
        ("--max_batch=0", "--max_batch"),
        (f"--log={tmp_path}/no/such/folder/serve.log", "--log: cannot write"),
        (f"--export={tmp_path}/nowhere", "not a folder"),
    ]:
        one_line_exit_2(serve_once(f"--export={export}", flag), reason)
    one_line_exit_2(serve_once(), "--export")


def test_export_refuses_checkpoints_files_and_unwritable_outs_with_one_line(workdir, tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    for out, reason in [
        (workdir / "checkpoints", "inside a run's checkpoints/"),
        (workdir / "checkpoints" / "export", "inside a run's checkpoints/"),
        (tmp_path / "file", "is an existing file"),
        (tmp_path / "file" / "export", "cannot write in"),
        (workdir, "is not an export"),
        (tmp_path / "other", "is not an export (it holds 'notes.txt')"),
    ]:
        result = run_script("export", f"--workdir={workdir}", f"--out={out}", check=False)
        one_line_exit_2(result, "--out:", reason)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20"]


def test_an_export_is_replaced_whole_or_not_at_all(workdir, tmp_path):
    out = tmp_path / "export"
    run_script("export", f"--workdir={workdir}", f"--out={out}", "--num_beams=1,2")
    before = {file.name: file.read_bytes() for file in out.iterdir()}
    # Killed once its first function is exported: the earlier export stays as it was.
    process = subprocess.Popen(
        command("export", f"--workdir={workdir}", f"--out={out}", "--num_beams=1,3", "--batch=2"),
        cwd=ROOT,
        env=script_env(PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        for line in process.stdout:  # bounded: the process ends
            if line.startswith("exported: translate_beams1.bin"):
                process.send_signal(signal.SIGKILL)
                break
    finally:
        process.kill()
        process.wait(timeout=60)
    assert {file.name: file.read_bytes() for file in out.iterdir()} == before
    # A whole re-export replaces every file: none of the earlier one is left beside it.
    run_script("export", f"--workdir={workdir}", f"--out={out}", "--num_beams=3", "--batch=2")
    meta = json.loads((out / "export.json").read_text())
    assert sorted(os.listdir(out)) == sorted(["export.json", *meta["files"]])
    assert meta["num_beams"] == [3] and meta["batch"] == 2
    assert all(digest(out / name) == value for name, value in meta["files"].items())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export.old-")]
