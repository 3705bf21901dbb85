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

import pytest

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


_PER_TEST: dict[str, float] = {}  # test id -> CPU seconds of its setup, call and teardown (with --cpu-durations)


def pytest_addoption(parser) -> None:
    parser.addoption("--cpu-durations", type=int, default=None, metavar="N",
                     help="list the N tests that took the most CPU seconds (setup, call and teardown; 0: all), "
                     "which a loaded machine does not distort as it does --durations")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if item.config.getoption("cpu_durations") is None:
        return (yield)
    before = sum(cpu_seconds())
    try:
        return (yield)
    finally:
        _PER_TEST[item.nodeid] = sum(cpu_seconds()) - before


def pytest_terminal_summary(terminalreporter) -> None:
    count = terminalreporter.config.getoption("cpu_durations")
    if count is not None and _PER_TEST:
        slowest = sorted(_PER_TEST.items(), key=lambda item: item[1], reverse=True)
        terminalreporter.write_sep("=", "most CPU seconds per test (setup + call + teardown, subprocesses included)")
        for nodeid, seconds in slowest[: count or None]:
            terminalreporter.write_line(f"{seconds:7.2f}s  {nodeid}")
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
