"""Measurement helpers for ``bench/benchmark.py``.

- ``run_timed(cmd)``: run a command as a subprocess, wall time from spawn to exit,
  CPU time of it and all its descendants, the CPU other processes used
  meanwhile, and the peak memory of its whole process tree (the process and
  every descendant, e.g. the worker processes) sampled with psutil every ~20 ms: the sum
  of RSS (an upper bound: shared library pages count once per process) and, every
  ~100 ms, the sum of PSS (shared pages split between the processes that map them).
- ``machine_info()``: CPU, cores, RAM and library versions, for the report.
- small statistics and markdown helpers.
"""
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import psutil

MIB = 1024 * 1024


class TreeMemorySampler(threading.Thread):
    """Peak memory of a process and all its descendants, sampled every ``interval`` seconds.

    RSS is read at every sample (``/proc/<pid>/statm``, ~20 us a process); PSS
    (``smaps_rollup``, ~0.1 ms) every ``pss_every`` samples; the list of
    descendants is refreshed every ``refresh`` seconds (walking /proc, ~2 ms).
    The sampler costs ~1-2% of one core, which matters on a 2-core machine.
    """

    def __init__(self, pid: int, interval: float = 0.02, refresh: float = 0.25, pss_every: int = 5):
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.interval, self.refresh, self.pss_every = interval, refresh, pss_every
        self.peak_rss = self.peak_pss = 0
        self.max_processes = 0
        self.procs = {pid: self.root}
        self._done = threading.Event()

    def descendants(self) -> list[psutil.Process]:
        """The descendants seen so far (some may have exited)."""
        return [p for pid, p in list(self.procs.items()) if pid != self.root.pid]

    def run(self) -> None:
        procs = self.procs = {self.root.pid: self.root}
        next_refresh = 0.0
        tick = 0
        while True:
            now = time.monotonic()
            if now >= next_refresh:
                try:
                    for child in self.root.children(recursive=True):
                        procs.setdefault(child.pid, child)
                except psutil.Error:
                    pass
                next_refresh = now + self.refresh
            with_pss = tick % self.pss_every == 0
            rss = pss = alive = 0
            for pid, proc in list(procs.items()):
                try:
                    if with_pss:
                        info = proc.memory_full_info()
                        pss += getattr(info, "pss", info.rss)
                    else:
                        info = proc.memory_info()
                except psutil.Error:  # exited, zombie
                    if pid != self.root.pid:
                        del procs[pid]
                    continue
                rss += info.rss
                alive += 1
            if alive:
                self.peak_rss = max(self.peak_rss, rss)
                if with_pss:
                    self.peak_pss = max(self.peak_pss, pss)
                self.max_processes = max(self.max_processes, alive)
            tick += 1
            if self._done.wait(self.interval):
                return

    def stop(self) -> None:
        self._done.set()
        self.join()


def _busy_seconds() -> float:
    """CPU seconds all cores of the machine have been busy (any process), since boot."""
    t = psutil.cpu_times()
    return sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))


class CpuMeter:
    """Wall time, CPU time of this process and of its reaped descendants, and the machine's other load.

    ``other_cores`` = (machine busy CPU - ours) / wall: how many cores other
    processes (or the hypervisor, via steal) took meanwhile. On a shared 2-core
    machine, a run with other_cores well above 0 ran slower than it could.
    """

    def __enter__(self):
        self._wall, self._self = time.perf_counter(), time.process_time()
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._children = ru.ru_utime + ru.ru_stime
        self._busy = _busy_seconds()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def stop(self, unreaped_cpu: float = 0.0) -> None:
        """End the measurement; ``unreaped_cpu``: CPU so far of our descendants that are still running
        (not yet in RUSAGE_CHILDREN), so that it is not counted as other load."""
        self.seconds = time.perf_counter() - self._wall
        self.cpu_self = time.process_time() - self._self
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu_children = ru.ru_utime + ru.ru_stime - self._children
        busy = _busy_seconds() - self._busy
        ours = self.cpu_self + self.cpu_children + unreaped_cpu
        self.other_cores = max(0.0, busy - ours) / self.seconds if self.seconds else 0.0


def _cpu_seconds(procs) -> dict[int, float]:
    cpu = {}
    for proc in procs:
        try:
            t = proc.cpu_times()
            if proc.status() != psutil.STATUS_ZOMBIE:
                cpu[proc.pid] = t.user + t.system
        except psutil.Error:
            pass
    return cpu


def follow_until_gone(procs, timeout: float = 5.0) -> tuple[float, float]:
    """Poll ``procs`` until all have exited; returns (their CPU seconds, seconds they lingered).

    Descendants that outlive the process we ran (re-parented to init, e.g. resource
    trackers) are reaped by init, so their CPU never reaches our RUSAGE_CHILDREN."""
    started, last = time.monotonic(), {}
    while True:
        now = _cpu_seconds(procs)
        last.update(now)
        if not now or time.monotonic() - started > timeout:
            return sum(last.values()), time.monotonic() - started
        time.sleep(0.02)


def wait_for_quiet(max_seconds: float, threshold_cores: float = 0.3, window: float = 30.0, log=print) -> float:
    """Wait (at most ``max_seconds``) until the whole machine used less than ``threshold_cores``
    over the last ``window`` seconds; returns the last window's load in cores."""
    deadline = time.monotonic() + max_seconds
    while True:
        busy, started = _busy_seconds(), time.monotonic()
        time.sleep(window)
        load = (_busy_seconds() - busy) / (time.monotonic() - started)
        if load < threshold_cores or time.monotonic() >= deadline:
            return load
        log(f"machine busy ({load:.2f} cores over {window:.0f} s); waiting for quiet")


@dataclass
class RunResult:
    """One timed subprocess run. ``cpu``: CPU seconds of the process and all its descendants (those
    that outlived it included); ``lingering``: how many descendants outlived it, for ``lingered_seconds``."""

    seconds: float
    peak_rss_mib: float
    peak_pss_mib: float
    processes: int
    cpu: float = float("nan")
    other_cores: float = float("nan")
    lingering: int = 0
    lingered_seconds: float = 0.0
    stdout: str = ""
    stderr: str = ""
    extra: dict = field(default_factory=dict)


class CommandFailed(RuntimeError):
    pass


def run_timed(cmd: list[str], cwd: str | None = None, sample: bool = True) -> RunResult:
    """Run ``cmd`` to completion; wall time from just before spawn to exit of the process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        meter = CpuMeter().__enter__()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        sampler = TreeMemorySampler(proc.pid) if sample else None
        if sampler:
            sampler.start()
        code = proc.wait()
        left = [p for p in sampler.descendants() if p.pid in _cpu_seconds([p])] if sampler else []
        meter.stop(unreaped_cpu=sum(_cpu_seconds(left).values()))
        unreaped, lingered = follow_until_gone(left) if left else (0.0, 0.0)
        if sampler:
            sampler.stop()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if code != 0:
        raise CommandFailed(f"{' '.join(cmd)} exited with {code}:\n{stderr[-3000:]}")
    return RunResult(meter.seconds, sampler.peak_rss / MIB if sampler else float("nan"),
                     sampler.peak_pss / MIB if sampler else float("nan"),
                     sampler.max_processes if sampler else 0, meter.cpu_children + unreaped, meter.other_cores,
                     len(left), lingered, stdout, stderr)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(repo: str, *args: str) -> str:
    try:
        return subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info(packer: str) -> dict[str, str]:
    import joblib
    import numpy
    import PIL
    from PIL import features

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    turbo = features.version("libjpeg_turbo") if features.check_feature("libjpeg_turbo") else None
    return {
        "CPU": _cpu_model(),
        "cores": f"{os.cpu_count()} logical, {affinity} usable",
        "RAM": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "Pillow": PIL.__version__ + (f" (libjpeg-turbo {turbo})" if turbo else ""),
        "numpy": numpy.__version__,
        "joblib": joblib.__version__,
        "packer": packer,
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    }


def machine_markdown(info: dict[str, str]) -> str:
    return "\n".join(f"- **{k}**: {v}" for k, v in info.items())
