"""Loaded (by PYTHONPATH) into a gateway started by benchmarks/bytecodes.py, and only there: counts the bytecodes
each function runs between SIGUSR1 and SIGUSR2 (``sys.settrace`` with opcode events), and the requests
(uvicorn's ``on_message_complete``, once per request), and writes them to ``BYTECODES_OUT`` at SIGUSR2. With
``BYTECODES_LINES`` (file name fragments, comma-separated) also per line of those files. Slow (tens of times),
but a count, not a time: the same requests count the same on any machine, busy or not."""

import collections
import os
import signal
import sys

_OUT = os.environ.get("BYTECODES_OUT")

if _OUT:
    _counts: collections.Counter = collections.Counter()
    _lines = [w for w in os.environ.get("BYTECODES_LINES", "").split(",") if w]

    def _tracer(frame, event, arg):  # type: ignore[no-untyped-def]
        code = frame.f_code
        if event == "call" and code.co_name == "on_message_complete":
            _counts[("", 0, "<requests>")] += 1
        frame.f_trace_opcodes = True
        key = (code.co_filename, code.co_firstlineno, code.co_qualname)
        by_line = any(w in code.co_filename for w in _lines)

        def local(frame, event, arg):  # type: ignore[no-untyped-def]
            if event == "opcode":
                _counts[key] += 1
                if by_line:
                    _counts[(code.co_filename, frame.f_lineno or 0, "<line>")] += 1
            return local

        return local

    def _start(signum, frame):  # type: ignore[no-untyped-def]
        _counts.clear()
        sys.settrace(_tracer)

    def _stop(signum, frame):  # type: ignore[no-untyped-def]
        sys.settrace(None)
        with open(_OUT + ".part", "w") as out:
            for (path, line, name), n in _counts.most_common():
                out.write(f"{n}\t{name}\t{path}:{line}\n")
        os.replace(_OUT + ".part", _OUT)  # whole or not there: the driver waits for the file

    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
