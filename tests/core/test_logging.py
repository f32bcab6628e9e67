"""Library logging hygiene (issue 22 item 7): the library only has a NullHandler; the command's handler follows stderr."""

import io
import logging
import subprocess
import sys

from fdistill.cli import _log_to_stderr


def test_importing_the_library_attaches_no_output_handler():
    code = (
        "import logging, fdistill, fdistill.lm.sampling, fdistill.lm.served, fdistill.evaluation.report\n"
        "handlers = logging.getLogger('fdistill').handlers\n"
        "assert handlers and all(type(h) is logging.NullHandler for h in handlers), handlers\n"
        "logging.getLogger('fdistill.lm.sampling').warning('quiet')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "quiet" not in done.stderr  # no last-resort handler printing the library's records


def test_the_command_handler_writes_to_the_current_stderr_after_the_old_one_closed(monkeypatch):
    """pytest swaps sys.stderr per test and closes the old one; a handler bound to the old stream printed
    "--- Logging error --- ValueError: I/O operation on closed file" for every later record."""
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    _log_to_stderr()
    _log_to_stderr()  # once only
    log = logging.getLogger("fdistill.test")
    log.info("to the first")
    first.close()
    monkeypatch.setattr(sys, "stderr", second)
    log.info("to the second")
    out = second.getvalue()
    assert "to the second" in out and "Logging error" not in out
    assert out.count("to the second") == 1
