"""SIGTERM and SIGINT wherever they land in the main thread, in process: jaxgen.cli raises
Stopped there, but never inside a garbage collection (jax registers a gc callback) or a
finalizer, where Python could only report it as unraisable; there the stop is held back and
raised in the main thread after the collection. The start-up case through the real script is
tests/test_loop_faults.py's."""

import gc
import signal
import sys
import time

import pytest

from jaxgen import cli


@pytest.fixture
def stop_on_signals():
    """cli.stop_on_signals for one test, called when the test says (after it registered its
    own gc callbacks, as jax does at import), with sys.unraisablehook wrapped to record what
    reaches it. Automatic collections are off, so that only the test's gc.collect() runs its
    callbacks and finalizers. The signal handlers, gc.callbacks, gc's state and the hook are
    restored afterwards."""
    signals = (signal.SIGTERM, signal.SIGINT)
    handlers = [signal.getsignal(s) for s in signals]
    callbacks, hook, enabled = list(gc.callbacks), sys.unraisablehook, gc.isenabled()
    reached = []  # every exception that reached sys.unraisablehook

    def install():
        cli.stop_on_signals()
        redeliver = sys.unraisablehook

        def recording(unraisable):
            reached.append(unraisable.exc_value)
            redeliver(unraisable)

        sys.unraisablehook = recording
        return reached

    gc.disable()
    try:
        yield install
    finally:
        gc.callbacks[:] = callbacks
        sys.unraisablehook = hook
        for s, handler in zip(signals, handlers, strict=True):
            signal.signal(s, handler)
        if enabled:
            gc.enable()


def raised_in(stop):
    """The function the main thread was running when the handler raised Stopped there."""
    tb = stop.tb
    while tb.tb_next is not None:
        tb = tb.tb_next
    assert tb.tb_frame.f_code is cli._raise_stopped.__code__
    return tb.tb_frame.f_back.f_code.co_name


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_landing_in_a_gc_callback_still_stops(signum, stop_on_signals, capsys):
    """A gc callback registered after stop_on_signals runs its "stop" phase after cli's last
    callback, outside the collection as cli sees it: Stopped is raised there, where Python
    prints "Exception ignored in ..." and carries on. sys.unraisablehook sends the signal
    again, and it stops the main thread after the collection, with nothing printed."""
    landed = []

    def callback(phase, info):
        if phase == "stop" and not landed:
            landed.append(phase)
            signal.raise_signal(signum)  # its handler runs inside this callback

    reached = stop_on_signals()
    gc.callbacks.append(callback)
    with pytest.raises(cli.Stopped) as stop:
        gc.collect()
        time.sleep(5)  # the signal is sent again when the hook has returned
    assert landed == ["stop"] and stop.value.signum == signum
    assert "Exception ignored" not in capsys.readouterr().err
    assert [type(e) for e in reached] == [cli.Stopped]


@pytest.mark.parametrize("phase", ["start", "stop"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_in_a_gc_callback_is_raised_after_the_collection(
    signum, phase, stop_on_signals, capsys
):
    """A signal whose handler runs inside a gc callback (jax registers one) is held back and
    raised in the main thread once the collection is over: the handler returns inside the
    callback, and no Stopped is ever swallowed there and sent again by sys.unraisablehook."""
    events = []

    def callback(callback_phase, info):
        if callback_phase == phase and not events:
            events.append("signal")
            signal.raise_signal(signum)  # its handler runs inside this callback
            events.append("handler returned")

    gc.callbacks.append(callback)
    reached = stop_on_signals()
    with pytest.raises(cli.Stopped) as stop:
        gc.collect()
        events.append("collected")
        time.sleep(5)  # the signal is sent again when the collection is over
    assert stop.value.signum == signum and "collected" in events
    assert raised_in(stop) == "test_a_signal_in_a_gc_callback_is_raised_after_the_collection"
    assert "Exception ignored" not in capsys.readouterr().err
    # The old cli let the handler raise inside the collection and re-sent the signal 50 ms
    # later from sys.unraisablehook: a full collection can outlast that, and it landed again.
    assert not [e for e in reached if isinstance(e, cli.Stopped)], reached
    assert events == ["signal", "handler returned", "collected"]
    assert cli._pending is None and not cli._collecting


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_in_a_finalizer_run_by_a_collection_is_raised_after_it(
    signum, stop_on_signals, capsys
):
    """The same for a __del__ that the collection runs (an object in a reference cycle)."""
    events = []

    class Finalized:
        def __del__(self):
            events.append("signal")
            signal.raise_signal(signum)  # its handler runs inside this __del__
            events.append("handler returned")

    reached = stop_on_signals()
    with pytest.raises(cli.Stopped) as stop:
        cycle = Finalized()
        cycle.itself = cycle
        del cycle  # only a collection finds it
        assert events == []
        gc.collect()
        events.append("collected")
        time.sleep(5)
    assert stop.value.signum == signum and "collected" in events
    assert raised_in(stop) == "test_a_signal_in_a_finalizer_run_by_a_collection_is_raised_after_it"
    assert "Exception ignored" not in capsys.readouterr().err
    # The old cli let the handler raise inside the collection and re-sent the signal 50 ms
    # later from sys.unraisablehook: a full collection can outlast that, and it landed again.
    assert not [e for e in reached if isinstance(e, cli.Stopped)], reached
    assert events == ["signal", "handler returned", "collected"]
    assert cli._pending is None and not cli._collecting


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_in_a_finalizer_outside_a_collection_still_stops(signum, stop_on_signals, capsys):
    """A __del__ run when the last reference goes is no collection: Stopped is raised there,
    Python cannot propagate it, and sys.unraisablehook sends the signal again; it stops the
    main thread after the __del__, with nothing printed."""
    events = []

    class Finalized:
        def __del__(self):
            events.append("signal")
            signal.raise_signal(signum)  # raises Stopped inside this __del__
            events.append("handler returned")

    reached = stop_on_signals()
    with pytest.raises(cli.Stopped) as stop:
        finalized = Finalized()
        del finalized
        events.append("deleted")
        time.sleep(5)  # the signal is sent again when the hook has returned
    assert stop.value.signum == signum and events == ["signal", "deleted"]
    assert raised_in(stop) == "test_a_signal_in_a_finalizer_outside_a_collection_still_stops"
    assert "Exception ignored" not in capsys.readouterr().err
    assert [type(e) for e in reached] == [cli.Stopped]
