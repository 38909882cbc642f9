"""Command-line plumbing shared by experiments/*.py.

Flags follow the research-codebase convention: `--config=path.py:arg` plus
`--config.section.field=value` overrides (ml_collections config_flags), or
`--workdir=W` alone for scripts that read W/config.json. Any bad input (an
unknown key, a wrong type, a value that cannot work, bad data) is printed as
one line naming the field or file, and the process exits with status 2. So is
a positional argument to a script that takes none (absl would ignore it), and
an error inside a config file (its path and line).

Before anything starts jax's backend, `run` turns on the persistent compilation cache
(--compilation_cache) and, on CPU, splits the host into one device per core for
data-parallel steps (--cpu_devices; jaxgen.parallel.set_cpu_devices).

Until the training loop takes them over, SIGTERM and SIGINT raise Stopped in the main thread
(one line, exit 128 + the signal's number), never inside a garbage collection: a signal that
lands in one (in jax's gc callback, in a finalizer) is held back and raised once it is over,
and one that lands in a finalizer outside a collection is sent again by sys.unraisablehook.
"""

import gc
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable

import jax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from jaxgen import distributed, parallel
from jaxgen.checkpoint import CheckpointReadError, CheckpointWriteError
from jaxgen.config import ConfigDict, ConfigError, load_workdir_config
from jaxgen.data import DataError
from jaxgen.metrics import EVALUATORS
from jaxgen.metrics.networks import cache_root
from jaxgen.train.loop import Interrupted, NonFiniteLossError
from jaxgen.workdir import RunWriteError

EXIT_BAD_INPUT = 2

flags.DEFINE_bool(
    "compilation_cache",
    True,
    "Keep compiled XLA programs on disk (persistent compilation cache) and reuse them in the "
    "next run; --nocompilation_cache (or JAXGEN_COMPILATION_CACHE=0) turns it off.",
)
flags.DEFINE_integer(
    "cpu_devices",
    int(os.environ.get("JAXGEN_CPU_DEVICES", "0") or 0),
    "On CPU: how many XLA devices the host is split into for data-parallel steps. 0 (the "
    "default, or $JAXGEN_CPU_DEVICES) = one per physical core, reduced to the largest count "
    "that divides the config's batch sizes; 1 = one device using XLA's intra-op threads. "
    "An explicit --xla_force_host_platform_device_count in XLA_FLAGS, JAX_NUM_CPU_DEVICES "
    "or a GPU/TPU backend wins.",
    lower_bound=0,
)


def use_cpu_devices(requested: int) -> int | None:
    """parallel.set_cpu_devices for the config of this script's --config flag (if any);
    call before anything starts jax's backend."""
    config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
    defaults = {name: getattr(EVALUATORS.get(name), "defaults", {}) for name in EVALUATORS.names()}
    return parallel.set_cpu_devices(requested, config, defaults)


def use_compilation_cache(enabled: bool = True) -> str | None:
    """Turn on jax's persistent compilation cache; returns its folder (None when off).

    The folder: $JAX_COMPILATION_CACHE_DIR if set, else <$JAXGEN_CACHE_DIR or
    ~/.cache/jaxgen>/xla. Every program is kept, however small or quick to compile
    (a :smoke run is mostly many small compiles). Call before the first compile.
    """
    if not enabled or os.environ.get("JAXGEN_COMPILATION_CACHE", "1").lower() in (
        "0",
        "false",
        "off",
    ):
        return None
    path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(cache_root(), "xla")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path


class Stopped(BaseException):
    """SIGTERM or SIGINT before the training loop took over the signals (start-up, compiling,
    sampling, evaluating). A BaseException, so that no library's `except Exception` eats it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# Where an exception raised by the signal handler would not propagate (Python would print
# "Exception ignored in ..." and carry on), the handler records the signal instead. CPython
# runs a Python signal handler in the main thread only at a check between bytecodes (a
# function's entry, a call's return, a backward jump), so a flag set or cleared by a plain
# assignment is never half-written when it reads it. A collection in another thread (they run
# one at a time) holds a signal back too, for the rest of that collection.
_collecting = False  # a garbage collection is in progress, between our first and last callbacks
_in_hook = 0  # how many calls of _redeliver_stopped (sys.unraisablehook) are running
_pending: int | None = None  # the signal held back, to raise once outside


def _raise_stopped(signum: int, frame) -> None:
    """The SIGTERM and SIGINT handler: raises Stopped in the main thread, or, inside a garbage
    collection or cli's own hook and callbacks, records the signal for _resend_when_safe."""
    global _pending
    # The frame check: the handler may run at the entry of a callback or of the hook, before
    # its first line sets the flag.
    if _collecting or _in_hook or (frame is not None and frame.f_code in _OWN_CODE):
        if _pending is None:  # the first signal wins, as it does outside
            _pending = signum
        return
    raise Stopped(signum)


def _collection_starts(phase: str, info: dict) -> None:
    """gc callback, first in gc.callbacks: the collection's callbacks (jax's among them) and
    finalizers run from here on."""
    global _collecting
    if phase == "start":
        _collecting = True  # no call before this line: see _raise_stopped's frame check


def _collection_ends(phase: str, info: dict) -> None:
    """gc callback, last in gc.callbacks: the collection is over; a signal it held back is sent
    again, to be raised in the main thread outside it."""
    global _collecting, _pending
    if phase != "stop":
        return
    try:
        if _pending is not None and not _in_hook:
            signum, _pending = _pending, None
            _resend_when_safe(signum)
    finally:
        # The last statement, with no check for signals between it and the return to gc:
        # once a thread sees it, the main thread is past every callback.
        _collecting = False


def _resend_when_safe(signum: int) -> None:
    """Send `signum` to the main thread again as soon as it is out of the collection or hook.

    Not from this thread: signal.raise_signal, os.kill and signal.pthread_kill to this process
    run the handler before they return, and _thread.interrupt_main at the next call, all
    still inside the callback. Not after a fixed delay either (the old 50 ms timer): a full
    collection can take longer than that, and the signal landed in it again. A thread can
    look at the flags and send only while it holds the GIL, that is while the main thread
    waits at a check for signals or in a blocking call. When it finds both flags down, the
    main thread has run past the statements that cleared them, which are the last ones of
    the gc callback and of the hook, with no check for signals after them: the handler then
    runs at the main thread's next check, in ordinary code, or in a new collection, which
    holds the signal back and sends it again at its end; nothing is lost and nothing waits
    longer than it must. pthread_kill to the main thread rather than a signal to the process
    (which the kernel may hand to any thread), so that a blocking call of the main thread (a
    sleep, a lock, a read) is interrupted at once.
    """
    main = threading.main_thread().ident

    def resend():
        while _collecting or _in_hook:
            time.sleep(0.001)
        signal.pthread_kill(main, signum)

    name = f"resend {signal.Signals(signum).name}"
    threading.Thread(target=resend, name=name, daemon=True).start()


_previous_unraisablehook = sys.unraisablehook


def _redeliver_stopped(unraisable) -> None:
    """sys.unraisablehook: a Stopped raised where Python cannot propagate it is sent again.

    That is a finalizer run outside a garbage collection (a __del__ when the last reference
    goes, a weakref callback), or a gc callback placed before cli's first one or after its
    last. Python would print "Exception ignored in ..." and carry on; instead the signal is
    raised again in the main thread once this hook has returned (_resend_when_safe), and the
    stop is one line as anywhere else. Anything else goes to the previous hook.
    """
    global _in_hook, _pending
    _in_hook += 1  # no call before this line: see _raise_stopped's frame check
    try:
        if isinstance(unraisable.exc_value, Stopped):
            if _pending is None:
                _pending = unraisable.exc_value.signum
        else:
            _previous_unraisablehook(unraisable)
        if _pending is not None and _in_hook == 1 and not _collecting:
            signum, _pending = _pending, None
            _resend_when_safe(signum)
    finally:
        _in_hook -= 1


_OWN_CODE = frozenset(
    f.__code__ for f in (_collection_starts, _collection_ends, _redeliver_stopped)
)


def stop_on_signals() -> None:
    """SIGTERM and SIGINT raise Stopped in the main thread, at a point where it propagates.

    The handler never raises inside a garbage collection: cli's gc callbacks, placed first and
    last in gc.callbacks (around jax's, registered when jax is imported), mark the collection,
    and a signal landing in it (in a callback or in a finalizer the collection runs) is held
    back and raised in the main thread once the collection is over. A Stopped raised where it
    cannot propagate all the same (a finalizer outside a collection, a gc callback registered
    after this call) reaches sys.unraisablehook, which sends the signal again. Calling this
    again puts the callbacks back first and last.
    """
    global _previous_unraisablehook
    if sys.unraisablehook is not _redeliver_stopped:
        _previous_unraisablehook = sys.unraisablehook
        sys.unraisablehook = _redeliver_stopped
    for callback in (_collection_starts, _collection_ends):
        while callback in gc.callbacks:
            gc.callbacks.remove(callback)
    gc.callbacks.insert(0, _collection_starts)
    gc.callbacks.append(_collection_ends)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _raise_stopped)


def fail(message: object) -> None:
    text = " ".join(str(message).split())
    print(f"error: {text}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


def _config_file(argv: list[str]) -> str | None:
    """The absolute path of the `--config=path.py:arg` file named in argv, if any."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
        else:
            continue
        return os.path.abspath(value.split(":", 1)[0])
    return None


def _config_file_error(error: BaseException, path: str | None) -> str | None:
    """'--config: FILE, line N: Type: message' if `error` (or what it wraps) was raised by
    running the config file at `path`; None otherwise."""
    seen = set()
    while path is not None and error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, SyntaxError) and os.path.abspath(error.filename or "") == path:
            return f"--config: {path}, line {error.lineno}: SyntaxError: {error.msg}"
        frames = traceback.extract_tb(error.__traceback__)
        lines = [f.lineno for f in frames if os.path.abspath(f.filename) == path]
        if lines:
            return f"--config: {path}, line {lines[-1]}: {type(error).__name__}: {error}"
        error = error.__cause__ or error.__context__
    return None


def _parse_flags(argv: list[str]) -> list[str]:
    """flags.FLAGS(argv), with an error raised inside the config file named by file and line."""
    try:
        return flags.FLAGS(argv)
    except Exception as error:
        if (located := _config_file_error(error, _config_file(argv))) is not None:
            fail(located)
        raise


def _parse(argv: list[str]) -> list[str]:
    try:
        rest = _parse_flags(argv)
    except (flags.Error, ConfigError, FileNotFoundError) as error:
        text = str(error)
        if "Traceback" in text:  # an exception inside the config file: keep its last line
            flag = text.split(":", 1)[0]
            text = f"{flag}: {text.strip().splitlines()[-1].strip()}"
        fail(text)
    except (AttributeError, KeyError) as error:
        # ml_collections: an override of a key the config does not have.
        cause = error.args[0] if error.args else error
        text = (cause.args[0] if isinstance(cause, KeyError) and cause.args else str(cause)).strip()
        fail(f"--config: unknown key {text}")
    except (TypeError, ValueError) as error:
        fail(f"--config: bad override: {error}")
    if "config" in flags.FLAGS and flags.FLAGS["config"].value is not None:
        try:
            flags.FLAGS.config.keys()  # config_flags defers a failed load to first use
        except OSError as error:
            fail(f"--config: {str(error).strip().splitlines()[-1].strip()}")
    return rest


def _parse_without_arguments(argv: list[str]) -> list[str]:
    rest = _parse(argv)
    if len(rest) > 1:
        fail(
            f"unexpected argument {rest[1]!r}: this script takes flags only, written "
            "--name=value (see --help)"
        )
    return rest


def define_config_file() -> None:
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Config file and argument, e.g. configs/vae/mnist.py:smoke.",
        lock_config=True,
    )


def flag_values(argv: list[str], name: str) -> list[str]:
    """The values given to --<name> in argv, written --name=value or --name value (read before
    absl parses the flags)."""
    values = []
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            values.append(arg.split("=", 1)[1])
        elif arg == f"--{name}" and i + 1 < len(argv):
            values.append(argv[i + 1])
    return values


def define_workdir_config(
    argv: list[str], extend: Callable[[ConfigDict], None] | None = None
) -> None:
    """`--config` holding W/config.json, so `--config.sample.x=...` overrides work.

    extend(config), if given, changes the loaded config first (in memory only), e.g. adds
    evals entries that overrides may then refine.
    """
    workdir = next(iter(flag_values(argv, "workdir")), None)
    if workdir is None:
        fail("--workdir: required (the run directory to read config.json and checkpoints from)")
    try:
        config = load_workdir_config(workdir)
    except ConfigError as error:
        fail(error)
    if extend is not None:
        extend(config)
    try:  # parses the --config.* overrides of argv at once
        config_flags.DEFINE_config_dict(
            "config", config, "The run's config with overrides.", lock_config=True
        )
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        fail(f"--config: bad override: {str(error).strip().splitlines()[-1]}")


def run(
    main: Callable[[list[str]], None],
    *,
    takes_arguments: bool = False,
    stopped: str = "before it finished; nothing was written",
) -> None:
    """absl's app.run with one-line errors and exit status 2 for bad input.

    Positional arguments are refused unless `takes_arguments` (main gets them in argv[1:]).
    A write that fails (disk full...) is one line and exit 1. SIGTERM or SIGINT outside the
    training loop (which saves first, see jaxgen.train.loop) is one line, `error: stopped by
    SIGTERM <stopped>`, and exit 128 + the signal's number (143, 130).
    """

    def guarded(argv):
        # Libraries (Orbax above all) log every save at INFO: keep their warnings only.
        absl_logging.set_verbosity(absl_logging.WARNING)
        logging.getLogger("jaxgen").setLevel(logging.INFO)
        use_compilation_cache(flags.FLAGS.compilation_cache)
        use_cpu_devices(flags.FLAGS.cpu_devices)
        stop_on_signals()
        try:
            distributed.initialize()  # join a multi-process job named by JAXGEN_*; else no-op
            main(argv)
        except (ConfigError, DataError, CheckpointReadError) as error:
            fail(error)
        except (NonFiniteLossError, CheckpointWriteError, RunWriteError) as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)
        except Interrupted as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(128 + signal.SIGINT)
        except Stopped as stop:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the line below is the last word
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print(f"error: stopped by {stop} {stopped}", file=sys.stderr, flush=True)
            os._exit(128 + stop.signum)

    app.run(guarded, flags_parser=_parse if takes_arguments else _parse_without_arguments)
