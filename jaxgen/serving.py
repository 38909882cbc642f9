"""Serving an exported translate function over HTTP: Starlette under uvicorn.

Reads only a folder written by experiments/export.py and imports no training code (jax, numpy,
flax.serialization, tokenizers, starlette, uvicorn). What it owns:
- `load_export`: the folder checked before anything listens (export.json's fields and file
  digests, every file readable, params shapes against each exported function's inputs, the
  tokenizer loadable, one trial call per beam size); any fault is an `ExportError` of one line.
- `parse_request`: a request body to (sources, num_beams), or a `BadRequest` naming the field.
- `Batcher`: requests queued and translated together, up to `max_rows` rows per device call.
- `make_app`: the Starlette app (GET /health, POST /translate; every reply JSON).
- `Protocol`: uvicorn's h11 protocol with what it leaves out: a deadline for a request to
  arrive whole, and JSON replies to requests that never reach the app (a bad request line, a
  bad Content-Length, an input that ends mid-request).
It leaves out authentication and TLS: bind it to 127.0.0.1 (the default) or put it behind a
proxy that has them.
"""

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import sys

import h11
import jax
import numpy as np
import tokenizers
from flax import serialization
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_ROWS = 256  # sources per request
FIELDS = ("source", "num_beams")  # what a request may hold
META_FIELDS = ("source_len", "eos_id", "pad_id", "batch", "num_beams", "max_new_tokens", "files")
LOGGER = "jaxgen.serving"  # tracebacks go to its file handler, never the console


class ExportError(ValueError):
    """An export folder that cannot be served (one line naming the file)."""


class BadRequest(ValueError):
    """A request answered with a 4xx JSON error; the message names the field."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(" ".join(message.split()))
        self.status = status


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _positive_int(value, allow_zero: bool = False) -> bool:
    return type(value) is int and (value >= 0 if allow_zero else value > 0)


def _read_meta(folder: str) -> dict:
    path = os.path.join(folder, "export.json")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ExportError(f"{path}: cannot read it ({one_line(error)})") from None
    if not isinstance(meta, dict):
        raise ExportError(f"{path}: a JSON {type(meta).__name__}, not the object export writes")
    missing = [key for key in META_FIELDS if key not in meta]
    if missing:
        raise ExportError(f"{path}: no {', '.join(missing)}; re-export with experiments.export")
    for key in ("source_len", "max_new_tokens"):
        if not _positive_int(meta[key]):
            raise ExportError(f"{path}: {key}={meta[key]!r}, not a positive integer")
    for key in ("eos_id", "pad_id", "batch"):
        if not _positive_int(meta[key], allow_zero=True):
            raise ExportError(f"{path}: {key}={meta[key]!r}, not a non-negative integer")
    beams = meta["num_beams"]
    if not (isinstance(beams, list) and beams and all(_positive_int(k) for k in beams)):
        raise ExportError(f"{path}: num_beams={beams!r}, not a list of positive integers")
    files = meta["files"]
    expected = ["params.msgpack", "tokenizer.json", *(f"translate_beams{k}.bin" for k in beams)]
    if not isinstance(files, dict) or sorted(files) != sorted(expected):
        raise ExportError(f"{path}: files={files!r}; expected digests of {expected}")
    return meta


def _check_files(folder: str, meta: dict) -> None:
    """Every file readable and the one export.json describes (no file of another export)."""
    for name, digest in meta["files"].items():
        path = os.path.join(folder, name)
        try:
            actual = sha256(path)
        except OSError as error:
            raise ExportError(f"{path}: cannot read it ({one_line(error)})") from None
        if actual != digest:
            raise ExportError(
                f"{path}: its SHA-256 differs from export.json's (a damaged file, or one from "
                "another export); re-export"
            )


def _check_params(params, exported, path: str) -> None:
    """params against the exported function's inputs: (params, source), structure and shapes."""
    source = np.zeros((1, 1), np.int32)  # stands for the source argument in the structure
    leaves, tree = jax.tree.flatten(((params, source), {}))
    if tree != exported.in_tree:
        raise ExportError(
            f"{path}: params.msgpack's structure is not the one it was exported with "
            f"({len(leaves) - 1} arrays against {len(exported.in_avals) - 1})"
        )
    names = [jax.tree_util.keystr(key) for key, _ in jax.tree.leaves_with_path(params)]
    for name, leaf, aval in zip(names, leaves[:-1], exported.in_avals[:-1], strict=True):
        leaf = np.asarray(leaf)
        if leaf.shape != aval.shape or leaf.dtype != aval.dtype:
            raise ExportError(
                f"params.msgpack: {name} is {leaf.dtype}{list(leaf.shape)}; {path} takes "
                f"{aval.dtype}{list(aval.shape)}"
            )


@dataclasses.dataclass
class Translator:
    """An export folder's functions, params and tokenizer, checked by `load_export`."""

    meta: dict
    params: dict
    tokenizer: tokenizers.Tokenizer
    functions: dict  # num_beams -> jax.export.Exported
    max_rows: int  # rows per device call

    def encode(self, texts: list[str]) -> np.ndarray:
        length, eos, pad = self.meta["source_len"], self.meta["eos_id"], self.meta["pad_id"]
        rows = np.full((len(texts), length), pad, np.int32)
        for row, encoding in enumerate(self.tokenizer.encode_batch(texts)):
            ids = [*encoding.ids, eos][:length]
            rows[row, : len(ids)] = ids
        return rows

    def rows_per_call(self, rows: int) -> int:
        """A fixed export's batch, else the next power of two: a few compiled shapes, not one
        per request size."""
        if self.meta["batch"]:
            return self.meta["batch"]
        return min(self.max_rows, 1 << max(rows - 1, 0).bit_length())

    def translate(self, texts: list[str], num_beams: int) -> list[str]:
        """Sources are cut to the exported source length, as in training."""
        source = self.encode(texts)
        outputs = []
        for start in range(0, len(texts), self.max_rows):
            chunk = source[start : start + self.max_rows]
            real, rows = len(chunk), self.rows_per_call(len(chunk))
            if real < rows:  # pad with copies of the last row; their outputs are dropped
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], rows - real, 0)])
            tokens, lengths = self.functions[num_beams].call(self.params, chunk)
            tokens, lengths = np.asarray(tokens)[:real], np.asarray(lengths)[:real]
            for row, length in zip(tokens, lengths, strict=True):
                ids = [int(t) for t in row[:length] if t != self.meta["eos_id"]]
                outputs.append(" ".join(self.tokenizer.decode(ids).split()))
        return outputs


def load_export(folder: str, max_rows: int) -> Translator:
    """The export folder, checked whole: an `ExportError` (one line) before anything listens."""
    if not os.path.isdir(folder):
        raise ExportError(f"{folder}: not a folder (write one with experiments.export)")
    meta = _read_meta(folder)
    _check_files(folder, meta)
    path = os.path.join(folder, "tokenizer.json")
    try:
        tokenizer = tokenizers.Tokenizer.from_file(path)
    except Exception as error:  # tokenizers raises plain Exceptions for a bad file
        raise ExportError(f"{path}: not a tokenizer ({one_line(error)})") from None
    if max(meta["eos_id"], meta["pad_id"]) >= tokenizer.get_vocab_size():
        raise ExportError(
            f"{path}: {tokenizer.get_vocab_size()} tokens; export.json's ids lie past"
        )
    path = os.path.join(folder, "params.msgpack")
    try:
        with open(path, "rb") as f:
            params = serialization.msgpack_restore(f.read())
    except Exception as error:  # msgpack raises several unrelated types
        raise ExportError(f"{path}: not a params file ({one_line(error)})") from None
    if not isinstance(params, dict) or not params:
        raise ExportError(f"{path}: holds no params")
    functions = {}
    for k in meta["num_beams"]:
        path = os.path.join(folder, f"translate_beams{k}.bin")
        try:
            with open(path, "rb") as f:
                functions[k] = jax.export.deserialize(bytearray(f.read()))
        except Exception as error:  # flatbuffers raises whatever a truncated buffer trips on
            raise ExportError(f"{path}: not a jax.export ({one_line(error)})") from None
        _check_params(params, functions[k], path)
        rows, length = functions[k].in_avals[-1].shape
        fixed = rows if isinstance(rows, int) else 0
        if length != meta["source_len"] or fixed != meta["batch"]:
            raise ExportError(
                f"{path}: takes source [{rows}, {length}]; export.json says batch "
                f"{meta['batch']}, source_len {meta['source_len']}"
            )
    params = jax.device_put(params)
    translator = Translator(meta, params, tokenizer, functions, meta["batch"] or max_rows)
    for k in meta["num_beams"]:  # one trial call: a fault here, not on the first request
        try:
            translator.translate(["a"], k)
        except Exception as error:
            path = os.path.join(folder, f"translate_beams{k}.bin")
            raise ExportError(f"{path}: a trial call failed ({one_line(error)})") from None
    return translator


class _Digits:
    """A JSON integer too long to be one Python parses safely (kept to name it in the error)."""

    def __init__(self, text: str):
        self.digits = len(text.lstrip("-"))

    def __repr__(self) -> str:
        return f"an integer of {self.digits} digits"


def _parse_int(text: str):
    return int(text) if len(text) <= 20 else _Digits(text)


def _parse_constant(name: str):
    raise BadRequest(f"the body is not UTF-8 JSON ({name} is not a JSON value)")


def _describe(value) -> str:
    if isinstance(value, _Digits):
        return repr(value)
    text = json.dumps(value, ensure_ascii=True)
    return (text if len(text) <= 40 else text[:37] + "...") + f" ({type(value).__name__})"


def parse_request(body: bytes, exported: list[int]) -> tuple[list[str], int]:
    """A POST /translate body to (sources, num_beams); a `BadRequest` naming the field."""
    try:
        request = json.loads(
            body.decode("utf-8"), parse_int=_parse_int, parse_constant=_parse_constant
        )
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadRequest(f"the body is not UTF-8 JSON ({error})") from None
    except RecursionError:
        raise BadRequest(
            "the body is not UTF-8 JSON this server reads: nested too deeply"
        ) from None
    if not isinstance(request, dict):
        raise BadRequest('the body must be a JSON object {"source": [...]}')
    unknown = [name for name in request if name not in FIELDS]
    if unknown:
        names = ", ".join(json.dumps(name, ensure_ascii=True)[:40] for name in unknown[:5])
        raise BadRequest(f"unknown field(s) {names}; a request holds only {list(FIELDS)}")
    source = request.get("source")
    if isinstance(source, str):
        source = [source]
    if not isinstance(source, list) or not source:
        raise BadRequest('"source": must be a non-empty list of strings')
    if len(source) > MAX_ROWS:
        raise BadRequest(f'"source": {len(source)} rows, at most {MAX_ROWS} per request')
    for row, text in enumerate(source):
        if not isinstance(text, str) or not text.strip():
            raise BadRequest(f'"source"[{row}]: {_describe(text)}; every entry must be a '
                             "non-empty string")  # fmt: skip
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise BadRequest(
                f'"source"[{row}]: not valid Unicode ({error.reason} {text[error.start]!a} at '
                f"character {error.start})"
            ) from None
    num_beams = request.get("num_beams", min(exported))
    if type(num_beams) is not int:
        raise BadRequest(f'"num_beams": {_describe(num_beams)}; an integer, exported: {exported}')
    if num_beams not in exported:
        raise BadRequest(f'"num_beams": {num_beams}; exported: {exported}')
    return source, num_beams


@dataclasses.dataclass
class _Job:
    sources: list[str]
    num_beams: int
    future: asyncio.Future


class Batcher:
    """Requests waiting together go to the device together: up to `max_rows` rows of one beam
    size per call, in arrival order, one call at a time (in a worker thread)."""

    def __init__(self, translator: Translator, max_rows: int):
        self.translator, self.max_rows = translator, max_rows
        self.pending: collections.deque[_Job] = collections.deque()
        self.wakeup = asyncio.Event()
        self.batches, self.rows = 0, 0  # batches translated, rows they held (GET /health)

    async def translate(self, sources: list[str], num_beams: int) -> list[str]:
        job = _Job(sources, num_beams, asyncio.get_running_loop().create_future())
        self.pending.append(job)
        self.wakeup.set()
        return await job.future

    def _take(self) -> list[_Job]:
        """The first waiting job and those after it with its beam size, up to max_rows rows."""
        first = self.pending.popleft()
        jobs, rows, kept = [first], len(first.sources), collections.deque()
        while self.pending:
            job = self.pending.popleft()
            if job.num_beams == first.num_beams and rows + len(job.sources) <= self.max_rows:
                jobs.append(job)
                rows += len(job.sources)
            else:
                kept.append(job)
        self.pending = kept
        return [job for job in jobs if not job.future.done()]  # a client gone: skip it

    async def run(self) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while self.pending:
                jobs = self._take()
                if jobs:
                    await self._run(jobs)

    async def _run(self, jobs: list[_Job]) -> None:
        sources = [text for job in jobs for text in job.sources]
        try:
            outputs = await asyncio.to_thread(self.translator.translate, sources, jobs[0].num_beams)
            if len(outputs) != len(sources):
                raise RuntimeError(f"{len(outputs)} translations of {len(sources)} sources")
        except Exception as error:  # each of its requests answers 500 and logs it
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        finally:
            self.batches, self.rows = self.batches + 1, self.rows + len(sources)
        for job in jobs:
            if not job.future.done():
                job.future.set_result(outputs[: len(job.sources)])
            outputs = outputs[len(job.sources) :]


def _error(status: int, message: str) -> JSONResponse:
    # The connection stays open: uvicorn reads and drops the rest of an unread body (a reset
    # would lose this reply), within the protocol's deadline.
    return JSONResponse({"error": message}, status)


def make_app(translator: Translator, *, max_rows: int, max_body: int) -> Starlette:
    """GET /health and POST /translate; every reply, errors included, is JSON."""
    logger = logging.getLogger(LOGGER)
    batcher = Batcher(translator, max_rows)
    exported = sorted(translator.functions)

    async def health(request: Request) -> JSONResponse:
        batches, rows = batcher.batches, batcher.rows
        return JSONResponse({"ok": True, "num_beams": exported, "batches": batches, "rows": rows})

    async def read_body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and int(length) > max_body:  # h11 checked its digits
            raise BadRequest(f"Content-Length: {length[:30]} bytes; at most {max_body}", 413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body:
                raise BadRequest(f"the body: over {max_body} bytes", 413)
        return bytes(body)

    async def translate(request: Request) -> JSONResponse:
        try:
            sources, num_beams = parse_request(await read_body(request), exported)
            translation = await batcher.translate(sources, num_beams)
            return JSONResponse({"translation": translation, "num_beams": num_beams})
        except BadRequest as error:
            return _error(error.status, str(error))
        except ClientDisconnect:
            return _error(400, "the client closed the connection mid-request")  # never sent
        except Exception as error:
            logger.exception("POST /translate failed")
            return _error(500, f"internal error ({type(error).__name__}); see the server log")

    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 404:
            return _error(404, f"no such path {request.url.path}; POST /translate, GET /health")
        return _error(error.status_code, f"{request.method} {request.url.path}: {error.detail}")

    async def server_error(request: Request, error: Exception) -> JSONResponse:
        logger.error("%s %s failed", request.method, request.url.path, exc_info=error)
        return _error(500, f"internal error ({type(error).__name__}); see the server log")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/translate", translate, methods=["POST"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    return app


LINGER_SECONDS = 2.0
REQUEST_LINE = re.compile(rb"[A-Z]+ [^ ]+ HTTP/1\.[01]")


def _raw_reply(status: int, message: str) -> bytes:
    """A whole JSON error reply, for requests h11 cannot answer through its state machine."""
    body = json.dumps({"error": " ".join(message.split())}, ensure_ascii=False).encode()
    head = (
        f"HTTP/1.1 {status} {_PHRASES.get(status, 'Error')}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


_PHRASES = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large"}


class Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus:
    - a deadline: a request must arrive whole within `timeout` seconds of its first byte (or of
      the connection, or of the previous reply), else 408 JSON and the connection closes; an
      idle connection closes at the same deadline;
    - JSON errors for requests the app never sees: a request line that is not HTTP/1.x (an
      HTTP/0.9 line would otherwise wait for headers that never come), what h11 rejects (bad
      or negative Content-Length, headers too long), an input that ends mid-request.
    The timeout is `config.timeout_keep_alive`, the one setting uvicorn has for it.
    """

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._discarding = False  # after an error reply: input dropped until the close
        self._start_request()

    def _start_request(self) -> None:
        self._head = b""  # the request line so far, until checked
        self._line_checked = False
        self._cancel_deadline()
        self._deadline = self.loop.call_later(self.timeout_keep_alive, self._deadline_passed)

    def _cancel_deadline(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
            self._deadline = None

    def _reply_and_close(self, status: int, message: str) -> None:
        logging.getLogger("uvicorn.error").warning("%s: %s", status, message)
        self._cancel_deadline()
        replying = self.cycle is not None and self.cycle.response_started
        if replying and self.cycle.response_complete:
            replying = False  # the previous request's cycle: this request has none yet
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app's reply, if any, is dropped
            self.cycle.message_event.set()
        if not self.transport.is_closing():
            if not replying:
                self.transport.write(_raw_reply(status, message))
            # A lingering close, as nginx's: the reply, then EOF, then the client's unread
            # bytes dropped for a while. Closing with them unread would reset the connection,
            # and the client would lose the reply.
            self._discarding = True
            self.transport.resume_reading()
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _deadline_passed(self) -> None:
        self._deadline = None
        state = self.conn.their_state
        if self.transport.is_closing() or state in (h11.DONE, h11.MUST_CLOSE):
            return
        # Answered already, the rest of its body being dropped; or idle: close, say nothing.
        answered = self.cycle is not None and self.cycle.response_complete
        waiting = state is h11.SEND_BODY or bool(self.conn.trailing_data[0]) or self._head
        if waiting and not (answered and state is h11.SEND_BODY):
            self._reply_and_close(408, f"the request did not arrive whole within "
                                       f"{self.timeout_keep_alive:g} s")  # fmt: skip
        else:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        if not self._line_checked and self.conn.their_state is h11.IDLE:
            self._head = (self._head + data).lstrip(b"\r\n")
            if b"\n" in self._head or len(self._head) > 8192:
                self._line_checked = True
                line = self._head.split(b"\n", 1)[0].rstrip(b"\r")
                if not REQUEST_LINE.fullmatch(line):
                    shown = line[:60].decode("latin-1")
                    self._reply_and_close(400, f"the request line {shown!r} is not HTTP/1.x")
                    return
        super().data_received(data)
        if self.conn.their_state in (h11.DONE, h11.MUST_CLOSE):
            self._cancel_deadline()

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this inside its `except h11.RemoteProtocolError`: name what h11 found.
        error = sys.exc_info()[1]
        status = getattr(error, "error_status_hint", 400)
        self._reply_and_close(status, f"a bad HTTP request ({one_line(error) if error else msg})")

    def eof_received(self) -> bool:
        if self._discarding:
            return False
        state, (buffered, _) = self.conn.their_state, self.conn.trailing_data
        answered = self.cycle is not None and self.cycle.response_complete
        if (state is h11.SEND_BODY and not answered) or (state is h11.IDLE and buffered):
            self._reply_and_close(400, "the input ended mid-request (a body shorter than its "
                                       "Content-Length, or headers never ended)")  # fmt: skip
        return False

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._start_request()

    def connection_lost(self, exc) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)


class _OneLine(logging.Formatter):
    """Console lines without tracebacks (those go to the log file)."""

    def __init__(self, log_path: str):
        super().__init__("%(levelname)s: %(message)s")
        self.log_path = log_path

    def format(self, record: logging.LogRecord) -> str:
        line = " ".join(record.getMessage().split())
        if record.exc_info or record.exc_text:
            line += f" (traceback in {self.log_path})"
        return f"{record.levelname}: {line}"


def configure_logging(log_path: str) -> None:
    """Tracebacks (the app's and uvicorn's) to `log_path`; the console gets one line each."""
    to_file = logging.FileHandler(log_path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    to_console = logging.StreamHandler(sys.stderr)
    to_console.setFormatter(_OneLine(log_path))
    for name in (LOGGER, "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [to_file, to_console]
        logger.setLevel(logging.INFO)
        logger.propagate = False


def make_server(app, *, timeout: float, backlog: int):
    """A uvicorn server for `app` with `Protocol` (its deadline is `timeout` seconds)."""
    import uvicorn

    config = uvicorn.Config(
        app,
        http=Protocol,
        timeout_keep_alive=timeout,
        backlog=backlog,
        lifespan="on",
        log_config=None,
        timeout_graceful_shutdown=max(timeout, 1),
        server_header=False,
    )
    return uvicorn.Server(config)
