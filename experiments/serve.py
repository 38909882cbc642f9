"""Serve an exported translate function over HTTP: Starlette under uvicorn (jaxgen/serving.py).

    python -m experiments.serve --export=/tmp/bible_export --port=8000
    curl -s localhost:8000/translate -d '{"source": ["En el principio crió Dios"], "num_beams": 4}'
    -> {"translation": ["In the beginning God created"], "num_beams": 4}

Loads what experiments/export.py wrote (export.json, params.msgpack, tokenizer.json and one
translate_beams<k>.bin per beam size), checks all of it (digests, shapes, tokenizer, one trial
call per beam size) and refuses to start with one line if anything is off. POST /translate takes
JSON {"source": [str, ...] (at most 256), "num_beams": k (optional: the smallest exported)};
requests waiting together are translated together, up to --max_batch rows per device call.
Every reply is JSON: a bad request gets a 4xx {"error": one line naming the field}, anything
unexpected a 500 whose traceback goes to --log (not the console). GET /health answers
{"ok": true, "num_beams": [...], "batches": batches translated so far, "rows": the rows they held}. Sources longer than the exported source length lose their end,
as in training. There is no authentication: keep the default --host=127.0.0.1 unless a proxy in
front of it has some.
"""

import argparse
import os
import socket
import sys

from jaxgen import serving


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, as every jaxgen script
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def fail(message: str):
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(2)


def number(text: str, flag: str, low: float, high: float, kind=int):
    try:
        value = kind(text)
    except ValueError:
        fail(f"{flag}: {text!r} is not a number")
    if not low <= value <= high:
        fail(f"{flag}: {text} is not in [{low}, {high}]")
    return value


def bind(host: str, port: int) -> socket.socket:
    """The listening socket's address, bound now (one line if taken or unresolvable)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as error:
        fail(f"--host: cannot resolve {host!r} ({serving.one_line(error)})")
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        fail(f"--host/--port: cannot listen on {host}:{port} ({error.strerror or error})")
    return sock


def main(argv=None) -> None:
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--export", required=True, help="folder written by experiments.export")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 exposes it unauthenticated")
    parser.add_argument("--port", default="8000", help="0: any free port (printed)")
    parser.add_argument("--max_batch", default="32", help="rows per device call")
    parser.add_argument("--max_body", default=str(1 << 20), help="request body limit, bytes")
    parser.add_argument("--timeout", default="10", help="seconds for a request to arrive whole")
    parser.add_argument("--backlog", default="128", help="connections queued before accept")
    parser.add_argument("--log", help="log file for tracebacks (default: EXPORT/serve.log)")
    args = parser.parse_args(argv)
    port = number(args.port, "--port", 0, 65535)
    max_batch = number(args.max_batch, "--max_batch", 1, 4096)
    max_body = number(args.max_body, "--max_body", 1024, 1 << 30)
    timeout = number(args.timeout, "--timeout", 0.1, 3600, float)
    backlog = number(args.backlog, "--backlog", 1, 65535)
    if not os.path.isdir(args.export):
        fail(f"--export: {args.export}: not a folder (write one with experiments.export)")
    log = args.log or os.path.join(args.export, "serve.log")
    sock = bind(args.host, port)
    try:
        serving.configure_logging(log)
    except OSError as error:
        fail(f"--log: cannot write {log} ({error.strerror or error}); name another with --log")
    try:
        translator = serving.load_export(args.export, max_batch)
    except serving.ExportError as error:
        fail(f"--export: {error}")
    sock.listen(backlog)
    app = serving.make_app(translator, max_rows=translator.max_rows, max_body=max_body)
    server = serving.make_server(app, timeout=timeout, backlog=backlog)
    host, bound = sock.getsockname()[:2]
    print(f"serving {args.export} on http://{host}:{bound}/translate", flush=True)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
