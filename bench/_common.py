"""What the benchmarks in bench/ share: the import path, throwaway sites, CPU accounting, a temporary PostgreSQL,
and the figures table. Not a benchmark itself.

Each bench script starts with ``import _common`` (bench/ is on sys.path when a script in it runs), which puts the
repository root on sys.path and sets up Django with the test settings (MODELS_DIR defaults to the test suite's
/tmp/n3-test-models, where the built-in base models are cached).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.chdir(ROOT)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import django  # noqa: E402

django.setup()

from tests.servers import postgres_database, postgres_server, redis_server  # noqa: E402,F401  (for the bench scripts)
from tests.sites import Site, children_of, make_site  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def throwaway_site(prefix: str, **env: str) -> Iterator[Site]:
    """A migrated site in a new temp dir (tests/sites.py), removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix=f"n3-bench-{prefix}-"))
    try:
        yield make_site(tmp, **env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- CPU accounting: who used the 2 cores during a measurement ----------------------------------------------------


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its children (gunicorn: the arbiter and its workers)."""
    return process_cpu_s(pid) + sum(tree_cpu_s(child) for child in children_of(pid))


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (from /proc/stat: everything but idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK


@dataclass
class CpuUse:
    """CPU seconds over one measurement: the server's processes, this process (the clients), and the whole machine."""

    server_s: float
    client_s: float
    machine_s: float
    wall_s: float

    @property
    def others_s(self) -> float:
        """Everything else that ran on the machine meanwhile (other people's work, the kernel)."""
        return max(0.0, self.machine_s - self.server_s - self.client_s)


@contextlib.contextmanager
def cpu_use(server_pid: int) -> Iterator[list]:
    """``with cpu_use(pid) as out:`` ... then ``out[0]`` is the CpuUse of the block."""
    out: list[CpuUse] = []
    server, client, machine, wall = tree_cpu_s(server_pid), time.process_time(), machine_busy_s(), time.perf_counter()
    yield out
    out.append(CpuUse(server_s=tree_cpu_s(server_pid) - server, client_s=time.process_time() - client,
                      machine_s=machine_busy_s() - machine, wall_s=time.perf_counter() - wall))


def cpu_note(use: CpuUse, units: int, unit: str) -> str:
    """One line: CPU ms per unit for the server and the clients, and what others used of the cores meanwhile."""
    return (f"CPU per {unit}: server {use.server_s / units * 1000:.2f} ms, "
            f"clients {use.client_s / units * 1000:.2f} ms; "
            f"cores busy {use.machine_s / use.wall_s:.2f} of {os.cpu_count()}, "
            f"of which others {use.others_s / use.wall_s:.2f}")


# --- a temporary PostgreSQL ---------------------------------------------------------------------------------------


# --- the figures table --------------------------------------------------------------------------------------------


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    target: str = ""  # e.g. ">= 1000"; empty: reported, no target
    passed: bool | None = None

    def row(self) -> tuple[str, str, str, str]:
        if isinstance(self.value, int) or abs(self.value) >= 100:
            value = f"{self.value:,.0f}"
        else:
            value = f"{self.value:,.1f}"
        verdict = "" if self.passed is None else ("pass" if self.passed else "MISS")
        return self.name, f"{value} {self.unit}", self.target, verdict


def print_table(title: str, figures: list[Figure], notes: list[str] = ()) -> None:
    rows = [("figure", "value", "target", "result"), *(figure.row() for figure in figures)]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    line = "+".join("-" * (w + 2) for w in widths)
    print(f"\n{title}")
    print(line)
    for n, row in enumerate(rows):
        print(" | ".join(cell.ljust(w) if i != 1 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
        if n == 0:
            print(line)
    print(line)
    for note in notes:
        print(f"  {note}")
    sys.stdout.flush()
