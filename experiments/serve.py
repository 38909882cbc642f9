"""Serve an exported translate function over HTTP (no jaxgen code: jax, numpy, tokenizers).

    python -m experiments.serve --export=/tmp/bible_export --port=8000
    curl -s localhost:8000/translate -d '{"source": ["En el principio crió Dios"], "num_beams": 4}'
    -> {"translation": ["In the beginning God created"], "num_beams": 4}

Loads what experiments/export.py wrote (export.json, params.msgpack, tokenizer.json and one
translate_beams<k>.bin per beam size) and answers POST /translate with JSON {"source": [str,
...], "num_beams": k (optional: the smallest exported)}. A bad request (not JSON, no "source"
list of non-empty strings, a beam size that was not exported, too many rows) gets HTTP 400 with
{"error": one line}, and the server keeps serving. GET /health answers {"ok": true}.
Sources longer than the exported source length lose their end, as in training.
"""

import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jax
import numpy as np
import tokenizers
from flax import serialization

MAX_ROWS = 256  # per request


class BadRequest(ValueError):
    """A request the server answers with HTTP 400."""


class Translator:
    """The exported functions, params and tokenizer of one export folder."""

    def __init__(self, folder: str):
        with open(os.path.join(folder, "export.json"), encoding="utf-8") as f:
            self.meta = json.load(f)
        with open(os.path.join(folder, "params.msgpack"), "rb") as f:
            self.params = serialization.msgpack_restore(f.read())
        self.tokenizer = tokenizers.Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        self.functions = {}
        for k in self.meta["num_beams"]:
            with open(os.path.join(folder, f"translate_beams{k}.bin"), "rb") as f:
                self.functions[k] = jax.export.deserialize(bytearray(f.read()))
        self.lock = threading.Lock()  # one device call at a time

    def encode(self, texts: list[str]) -> np.ndarray:
        length, eos, pad = self.meta["source_len"], self.meta["eos_id"], self.meta["pad_id"]
        rows = np.full((len(texts), length), pad, np.int32)
        for row, encoding in enumerate(self.tokenizer.encode_batch(texts)):
            ids = [*encoding.ids, eos][:length]
            rows[row, : len(ids)] = ids
        return rows

    def translate(self, texts: list[str], num_beams: int) -> list[str]:
        source = self.encode(texts)
        batch = self.meta["batch"] or len(texts)
        outputs = []
        for start in range(0, len(texts), batch):
            chunk = source[start : start + batch]
            real = len(chunk)
            if real < batch:  # a fixed-batch export: pad with copies of the last row
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - real, 0)])
            with self.lock:
                tokens, lengths = self.functions[num_beams].call(self.params, chunk)
            tokens, lengths = np.asarray(tokens)[:real], np.asarray(lengths)[:real]
            for row, length in zip(tokens, lengths, strict=True):
                ids = [int(t) for t in row[:length] if t != self.meta["eos_id"]]
                outputs.append(" ".join(self.tokenizer.decode(ids).split()))
        return outputs

    def answer(self, body: bytes) -> dict:
        try:
            request = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise BadRequest(f"the body is not UTF-8 JSON ({error})") from None
        if not isinstance(request, dict):
            raise BadRequest('the body must be a JSON object {"source": [...]}')
        source = request.get("source")
        if isinstance(source, str):
            source = [source]
        if not isinstance(source, list) or not source:
            raise BadRequest('"source": must be a non-empty list of strings')
        if not all(isinstance(text, str) and text.strip() for text in source):
            raise BadRequest('"source": every entry must be a non-empty string')
        if len(source) > MAX_ROWS:
            raise BadRequest(f'"source": {len(source)} rows, at most {MAX_ROWS} per request')
        num_beams = request.get("num_beams", min(self.functions))
        if num_beams not in self.functions or isinstance(num_beams, bool):
            raise BadRequest(f'"num_beams": {num_beams!r}; exported: {sorted(self.functions)}')
        return {"translation": self.translate(source, num_beams), "num_beams": num_beams}


def make_handler(translator: Translator):
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, payload: dict) -> None:
            body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802 (http.server's name)
            if self.path == "/health":
                self._reply(200, {"ok": True})
            else:
                self._reply(404, {"error": f"no such path {self.path}; POST /translate"})

        def do_POST(self):  # noqa: N802
            if self.path != "/translate":
                self._reply(404, {"error": f"no such path {self.path}; POST /translate"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            try:
                self._reply(200, translator.answer(self.rfile.read(length)))
            except BadRequest as error:
                self._reply(400, {"error": " ".join(str(error).split())})

        def log_message(self, format, *args):  # noqa: A002
            print(f"{self.address_string()} {format % args}", file=sys.stderr, flush=True)

    return Handler


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--export", required=True, help="folder written by experiments.export")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    try:
        translator = Translator(args.export)
    except (OSError, ValueError, KeyError) as error:
        print(f"error: --export: cannot load {args.export}: {' '.join(str(error).split())}",
              file=sys.stderr)  # fmt: skip
        sys.exit(2)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(translator))
    print(f"serving {args.export} on http://{args.host}:{server.server_port}/translate", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
