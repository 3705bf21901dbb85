"""A pytest plugin (loaded by tests/conftest.py) that ends the terminal summary with the run's CPU seconds beside
its wall time.

On a shared machine the wall time says as much about the other processes as about the tests; the CPU seconds
(this process and the subprocesses it waited for, user + system, from the interpreter's start) are the number
to compare between two runs of the fast loop.
"""

from __future__ import annotations

import os
import resource
import time

_WALL_START = time.monotonic()  # when conftest imported this plugin (pytest's own start-up comes before)


def _process_age_s() -> float | None:
    """Seconds since this process started (Linux), so the wall time counts pytest's start-up too."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, in clock ticks
        with open("/proc/uptime", encoding="ascii") as uptime:
            uptime_s = float(uptime.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime_s - start_ticks / os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds of this process, CPU seconds of its waited-for children), user + system."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def pytest_terminal_summary(terminalreporter) -> None:
    own, children = cpu_seconds()
    age = _process_age_s()
    wall = age if age is not None else time.monotonic() - _WALL_START
    try:
        load = "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        load = "load average unknown"
    terminalreporter.write_sep(
        "-", f"CPU {own + children:.1f} s (pytest {own:.1f} s + subprocesses {children:.1f} s), wall {wall:.1f} s, {load}"
    )
