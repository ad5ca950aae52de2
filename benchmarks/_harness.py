"""The measuring harness every benchmark in this folder shares.

What a benchmark measures (its workload, its peers, its targets) stays in its own script; how it
measures is here, once:

- **timing**: :func:`timed`, :func:`profiled`, :func:`sample_runs` (in-process repeats) and
  :func:`repeat_runs` (one fresh process per repeat, with the machine settled before each);
- **memory**: :func:`rss_now`, :func:`peak_rss`, :func:`proc_status` inside a process, and
  :func:`run_process`, which gets a child's peak RSS from ``os.wait4`` and can sample its
  anonymous / file-backed peaks;
- **child processes**: :func:`run_child` (parent side) and :func:`child_main` (child side) speak
  one JSON line per measurement;
- **page cache**: :func:`evict`, :func:`warm_page_cache`, :func:`settle`, :func:`resident_bytes`,
  :func:`read_ahead_bytes`;
- **a quiet machine**: :func:`wait_for_quiet` and :func:`background_line`;
- **reporting**: :class:`Measurement` (medians), :func:`ratio`, :func:`print_table`,
  :class:`Target` / :func:`check_targets`, :func:`print_header`, :func:`write_json`.

Linux only (``/proc``, ``mincore``, ``posix_fadvise``), like the benchmarks.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import mmap
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

T = TypeVar("T")
PAGE = 4096
MB = 1e6
GB = 1e9

# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """Wall time of ``fn()`` (``time.perf_counter``: monotonic, the finest clock) and its value."""
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def phase_timer(phases: dict[str, float], key: str, fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` wrapped so each call's wall time is added to ``phases[key]`` (for patching a
    module's function to see how long one phase of an operation takes)."""
    def wrapper(*a: Any, **k: Any) -> T:
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            phases[key] = phases.get(key, 0.0) + time.perf_counter() - t0
    return wrapper


def profiled(fn: Callable[[], T], enabled: bool, title: str, top: int = 15,
             sorts: Sequence[str] = ("tottime",)) -> tuple[float, T]:
    """:func:`timed`; with ``enabled``, under cProfile, whose top functions go to stderr (stdout
    carries the child's JSON line). The profiler slows the run: its time is not comparable."""
    if not enabled:
        return timed(fn)
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    seconds, value = timed(lambda: prof.runcall(fn))
    for key in sorts:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(top)
        print(f"--- cProfile of {title}, by {key} ---\n{buf.getvalue()}", file=sys.stderr)
    return seconds, value


def sample_runs(fn: Callable[[], Any], repeat: int, *, warmup: bool = False,
                before: Callable[[], Any] | None = None,
                after: Callable[[], T] | None = None) -> tuple[list[float], list[T | None], Any]:
    """Run ``fn`` ``repeat`` times in this process: (times, what ``after`` returned each time,
    the last value). ``warmup`` runs it once untimed first, so imports, caches and lazily built
    validators are not charged to the first sample. ``before`` / ``after`` are outside the clock."""
    result = fn() if warmup else None
    times: list[float] = []
    probes: list[T | None] = []
    for _ in range(repeat):
        if before:
            before()
        seconds, result = timed(fn)
        times.append(seconds)
        probes.append(after() if after else None)
    return times, probes, result


def median_time(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Median wall time of ``repeat`` in-process runs after one warm-up, and the last value."""
    times, _, result = sample_runs(fn, repeat, warmup=True)
    return statistics.median(times), result


# --------------------------------------------------------------------------------------------
# Memory, inside a process
# --------------------------------------------------------------------------------------------

STATUS_KEYS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / VmHWM / RssAnon / RssFile / RssShmem of a process, in bytes. RssFile is mapped
    page cache (clean, shared, droppable), RssAnon private heap: a zero-copy load shows up in the
    first, a copying one in the second, which ru_maxrss alone cannot tell apart."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in STATUS_KEYS:
                out[key] = int(rest.split()[0]) * 1024
    return out


def rss_now() -> int:
    """This process's resident set now, in bytes (the baseline taken right after the imports)."""
    return proc_status()["VmRSS"]


def peak_rss() -> int:
    """Peak RSS of this process so far (``ru_maxrss``, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def nbytes(t: Any) -> int:
    """Bytes of one tensor's elements."""
    return t.numel() * t.element_size()


def tensor_bytes(tensors: Mapping[str, Any]) -> int:
    """Bytes of every tensor's elements in a name -> tensor mapping."""
    return sum(nbytes(t) for t in tensors.values())


# --------------------------------------------------------------------------------------------
# Page cache and disk
# --------------------------------------------------------------------------------------------


def fsync_path(path: str | Path) -> None:
    """fsync a written file: the durability ``anemoi_ckpt.save`` always pays, added to a peer
    that does not fsync to compare like for like."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def evict(path: str | Path, fsync: bool = False) -> None:
    """Drop a file from the page cache (``posix_fadvise(DONTNEED)``), for cold-cache runs and so
    every file enters the cache the same way. Dirty pages are not dropped: ``fsync`` first if the
    file may have been written recently."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if fsync:
            os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm_page_cache(paths: Iterable[str | Path]) -> int:
    """Read every file once so all methods start from the same, warm page cache (and read from
    memory, not the disk). Returns the bytes read."""
    total = 0
    for p in paths:
        with open(p, "rb", buffering=0) as fh:
            while chunk := fh.read(16 << 20):
                total += len(chunk)
    return total


def settle() -> None:
    """Flush dirty pages left by earlier writes (untimed), so one measurement's write-back does
    not land in the next measurement's time."""
    os.sync()


def resident_bytes(path: str | Path, begin: int, end: int) -> int:
    """Bytes of ``path`` in [begin, end) that are in the page cache, via mincore(2). Reads through
    a memory map are invisible to read() counters (/proc/PID/io) but not to the page cache."""
    if end <= begin:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        import numpy as np  # the address of a read-only mmap: ctypes cannot take it from the mmap itself

        view = np.frombuffer(mm, dtype=np.uint8)
        addr = view.ctypes.data
        first, last = begin // PAGE, (end + PAGE - 1) // PAGE
        vec = (ctypes.c_ubyte * (last - first))()
        if libc.mincore(ctypes.c_void_p(addr + first * PAGE), ctypes.c_size_t((last - first) * PAGE), vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        del view
    return sum(v & 1 for v in vec) * PAGE


def read_ahead_bytes(path: str | Path) -> int | None:
    """The kernel's read-ahead window for the device holding ``path`` (None if unknown): how many
    bytes a single page fault on a mapping may pull in around it."""
    st = os.stat(path)
    base = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
    for candidate in (base / "queue/read_ahead_kb", base / "../queue/read_ahead_kb"):
        try:
            return int(candidate.read_text()) * 1024
        except (OSError, ValueError):
            continue
    return None


# --------------------------------------------------------------------------------------------
# A quiet machine
# --------------------------------------------------------------------------------------------


def background_cpu(interval: float = 0.3) -> float:
    """Fraction of all CPUs busy while this (idle) parent waits: other processes' load. The
    development machine has 2 cores, so anything else running (tests, builds) skews timings."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    busy0, total0 = sample()
    time.sleep(interval)
    busy1, total1 = sample()
    return (busy1 - busy0) / max(1, total1 - total0)


def wait_for_quiet(max_background: float, timeout: float) -> float:
    """Wait (up to ``timeout`` s) until other processes use under ``max_background`` of the CPUs;
    returns the load last seen, which is recorded with the sample either way."""
    deadline = time.monotonic() + timeout
    while True:
        load = background_cpu()
        if load <= max_background or time.monotonic() > deadline:
            return load
        time.sleep(1.0)


def background_line(loads: Iterable[float], max_background: float) -> str:
    """The closing line every benchmark prints: the highest background load seen before a run."""
    busiest = max(loads, default=0.0)
    return (f"\nbackground CPU load before measurements: max {busiest:.0%} of the machine"
            + ("  WARNING: something else was running; timings are unreliable, rerun on a quiet machine"
               if busiest > max_background else " (quiet)"))


# --------------------------------------------------------------------------------------------
# Child processes
# --------------------------------------------------------------------------------------------


class MemoryWatcher(threading.Thread):
    """Polls /proc/PID/status every 10 ms for the peaks of RssAnon and RssFile (ru_maxrss gives
    only their sum's peak). A sampled peak can miss a spike shorter than the interval."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                for key, value in proc_status(self.pid).items():
                    if key in self.peak:
                        self.peak[key] = max(self.peak[key], value)
            except (OSError, ValueError, IndexError):
                pass
            self.done.wait(0.01)


@dataclass
class ProcessResult:
    """What :func:`run_process` saw of one child."""

    seconds: float  # wall time from start to reaping, interpreter start-up included
    stdout: str
    stderr: str
    returncode: int
    peak_rss: int  # ru_maxrss of the child from os.wait4 (this child only, not the parent)
    read_bytes: int  # block-device bytes it caused to be read (ru_inblock x 512)
    peak_anon_sampled: int = 0  # with watch_memory: peaks of RssAnon / RssFile, 10 ms samples
    peak_file_sampled: int = 0

    def memory(self) -> dict[str, int]:
        return {"peak_rss": self.peak_rss, "peak_anon_sampled": self.peak_anon_sampled,
                "peak_file_sampled": self.peak_file_sampled}

    def last_json(self) -> dict[str, Any]:
        """The child's report: the last line of its stdout (anything printed before is ignored)."""
        return json.loads(self.stdout.strip().splitlines()[-1])


def run_process(cmd: Sequence[str], *, watch_memory: bool = False, check: bool = True,
                cwd: str | Path | None = None) -> ProcessResult:
    """Run ``cmd`` to completion. A separate process gives each measurement its own peak RSS
    (``ru_maxrss`` of the reaped child, from ``os.wait4``), its own allocator and imports, and no
    page mappings inherited from an earlier measurement. ``watch_memory`` polls its memory split
    from this process (a thread waking every 10 ms; leave it off where milliseconds are timed).
    Output goes to temporary files, not pipes, so a chatty child never blocks on a full pipe."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, cwd=cwd)
        watcher = MemoryWatcher(proc.pid) if watch_memory else None
        if watcher:
            watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = rc = os.waitstatus_to_exitcode(status)
        if watcher:
            watcher.done.set()
            watcher.join()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if check and rc != 0:
        shown = " ".join(a if len(a) < 200 else "<script>" for a in cmd)
        raise RuntimeError(f"{shown} failed ({rc}):\n{stderr[-4000:]}")
    result = ProcessResult(seconds, stdout, stderr, rc, usage.ru_maxrss * 1024, usage.ru_inblock * 512)
    if watcher:
        result.peak_anon_sampled, result.peak_file_sampled = watcher.peak["RssAnon"], watcher.peak["RssFile"]
    return result


def run_child(script: str | Path, mode: str, flags: Sequence[str], *, watch_memory: bool = False,
              echo_stderr: bool = True) -> dict[str, Any]:
    """Run ``script --child MODE FLAGS`` in a fresh interpreter and return its JSON report (see
    :func:`child_main`) with the parent's view of its memory (:meth:`ProcessResult.memory`)."""
    res = run_process([sys.executable, str(Path(script).resolve()), "--child", mode, *flags],
                      watch_memory=watch_memory)
    if echo_stderr and res.stderr.strip():
        print(res.stderr, file=sys.stderr)  # warnings, --profile output
    sample = res.last_json()
    sample.update(res.memory())
    return sample


def cp_sample(src: str | Path, dst: str | Path, durable: bool) -> dict[str, Any]:
    """The copy peer: coreutils ``cp SRC DST`` as a process (start-up included), then, if
    ``durable``, ``os.fsync(DST)`` from this process; both inside the clock. It reads the source
    and writes a same-sized output inside the kernel: the floor for any converter of the file.
    Returned as a sample like :func:`run_child`'s, DST as the output to delete."""
    def run() -> ProcessResult:
        res = run_process(["cp", str(src), str(dst)], watch_memory=True)
        if durable:
            fsync_path(dst)
        return res

    seconds, res = timed(run)
    return {"seconds": seconds, "rss_post_import": 0, "extra": {"output": str(dst)}, **res.memory()}


def import_first(*names: str) -> ModuleType:
    """The first of ``names`` that imports: for package modules that may have moved (e.g.
    ``anemoi_ckpt.container.tensorio``, before the layout change ``anemoi_ckpt.tensorio``:
    an exported older commit on PYTHONPATH is benchmarked as well)."""
    for name in names:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError:
            continue
    raise ModuleNotFoundError(f"none of {names} can be imported")


def preload(modules: Iterable[str | tuple[str, ...]]) -> None:
    """Import everything any measurement of a script needs before the baseline RSS is taken, so
    every row starts from the same post-import RSS and none pays an import inside its clock. A
    tuple is one module under its possible names (:func:`import_first`)."""
    for entry in modules:
        import_first(*((entry,) if isinstance(entry, str) else entry))


def child_main(mode: str, modes: Mapping[str, Callable[[], tuple[float, dict[str, Any]]]], *,
               prepare: Callable[[], dict[str, Any]] | None = None,
               imports: Iterable[str | tuple[str, ...]] = (), torch_threads: bool = True,
               warmup: Callable[[], Any] | None = None) -> None:
    """The body of a measuring child: preload, run ``warmup`` (a library's one-time set-up, which
    like an import belongs to no row), take the post-import RSS, run one mode (it returns
    its own timed seconds and extra facts), and print one JSON line with the memory read while
    the mode's results are still alive (the mode keeps them referenced). ``prepare`` writes the
    inputs instead (not measured) and prints what it returns."""
    preload(imports)
    if torch_threads:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    if mode == "prepare" and prepare is not None:
        print(json.dumps(prepare()))
        return
    if warmup is not None:
        warmup()
    post_import = rss_now()
    seconds, extra = modes[mode]()
    status = proc_status()
    print(json.dumps({"seconds": seconds, "rss_post_import": post_import, "peak_rss_self": peak_rss(),
                      "rss_anon_end": status["RssAnon"], "rss_file_end": status["RssFile"], "extra": extra}))


def package_origin() -> str:
    """``<version> from <folder>`` of the anemoi_ckpt this interpreter imports (a snapshot on
    PYTHONPATH or the editable install): printed so a result says what it measured."""
    import anemoi_ckpt

    return f"{anemoi_ckpt.__version__} from {Path(anemoi_ckpt.__file__).parent}"


# --------------------------------------------------------------------------------------------
# Repeats and medians
# --------------------------------------------------------------------------------------------


@dataclass
class Measurement:
    """The samples of one row (one dict per run) and their medians. Medians, because on a shared
    machine a run is occasionally slowed by another process; the mean would carry that."""

    mode: str
    label: str
    samples: list[dict[str, Any]]
    group: str = ""

    @property
    def seconds(self) -> float:
        return self.median("seconds")

    def median(self, key: str) -> float:
        return statistics.median(s[key] for s in self.samples)

    @property
    def rss_increase(self) -> float:
        """Median of peak RSS minus the RSS right after the imports (importing torch alone costs
        ~240 MB, which is not the measured code's doing); 0 where no baseline was taken."""
        return statistics.median(s["peak_rss"] - s["rss_post_import"] if s.get("rss_post_import") else 0
                                 for s in self.samples)

    def extra(self, key: str) -> Any:
        return self.samples[-1]["extra"][key]

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "group": self.group, "median_seconds": self.seconds,
                "samples": self.samples}


@dataclass
class Quiet:
    """How long to wait for a quiet machine before each run (``--max-background``,
    ``--quiet-timeout``)."""

    max_background: float = 0.1
    timeout: float = 120.0

    @classmethod
    def of(cls, args: argparse.Namespace) -> Quiet:
        return cls(args.max_background, args.quiet_timeout)


def repeat_runs(run_one: Callable[[], dict[str, Any]], repeat: int, quiet: Quiet | None, *,
                before: Callable[[], dict[str, Any]] | None = None,
                keep_last_output: bool = False) -> list[dict[str, Any]]:
    """``repeat`` samples of ``run_one`` (typically :func:`run_child`). Before each: the disk is
    synced (:func:`settle`), ``before`` runs (e.g. a cold-cache eviction; what it returns is added
    to the sample) and, unless ``quiet`` is None (nothing timed), the machine is let go quiet (the
    load seen is recorded as ``background_cpu``). A sample's ``extra["output"]`` file is deleted afterwards (all but the
    last run's with ``keep_last_output``), so outputs neither fill the disk nor stay cached."""
    samples = []
    for i in range(repeat):
        settle()
        pre = before() if before else {}
        load = wait_for_quiet(quiet.max_background, quiet.timeout) if quiet else None
        sample = run_one()
        sample["background_cpu"] = load
        sample.update(pre)
        output = sample.setdefault("extra", {}).pop("output", None)
        if output and not (keep_last_output and i == repeat - 1):
            os.unlink(output)
        samples.append(sample)
    return samples


def measure(mode: str, label: str, run_one: Callable[[], dict[str, Any]], repeat: int, quiet: Quiet, *,
            group: str = "", digits: int = 2, width: int = 44, note: Callable[[Measurement], str] | None = None,
            **kw: Any) -> Measurement:
    """:func:`repeat_runs`, then one progress line: label, median, the samples (and ``note``)."""
    m = Measurement(mode, label, repeat_runs(run_one, repeat, quiet, **kw), group)
    shown = ", ".join(f"{s['seconds']:.{digits}f}" for s in m.samples)
    print(f"  {label:<{width}} {m.seconds:8.{digits}f} s  (samples: {shown}; background max "
          f"{max(s['background_cpu'] for s in m.samples):.0%}){note(m) if note else ''}", flush=True)
    return m


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def ratio(a: float, b: float | None) -> float | None:
    """a / b, or None where there is no b to compare with."""
    return a / b if b else None


@dataclass
class Column:
    """One column of :func:`print_table`: title, width, format spec of its values and a unit
    printed after each value (``x`` for ratios). Text columns are left-aligned."""

    title: str
    width: int
    fmt: str = ""
    unit: str = ""

    def cell(self, value: Any) -> str:
        if isinstance(value, str) or not self.fmt:
            text = str(value)
            return f"{text:<{self.width}}" if not self.fmt else f"{text:>{self.width}}"
        if value is None:
            return f"{'-':>{self.width}}"
        return f"{value:{self.width - len(self.unit)}{self.fmt}}{self.unit}"

    def head(self) -> str:
        return f"{self.title:<{self.width}}" if not self.fmt else f"{self.title:>{self.width}}"


def print_table(columns: Sequence[Column], rows: Iterable[Sequence[Any]], note: str = "") -> None:
    """A blank line, the header, a rule, one line per row, and an optional note under it."""
    head = " ".join(c.head() for c in columns)
    print("\n" + head + "\n" + "-" * len(head))
    for row in rows:
        print(" ".join(c.cell(v) for c, v in zip(columns, row)).rstrip())
    if note:
        print(note)


@dataclass
class Target:
    """One target of an issue: ``value`` against ``limit``. ``strict`` makes the limit itself a
    failure (``<`` rather than ``<=``), as the issue words it for that target."""

    label: str
    value: float
    limit: float
    higher_is_better: bool = False
    unit: str = "x"
    strict: bool = False

    @property
    def ok(self) -> bool:
        if self.higher_is_better:
            return self.value > self.limit if self.strict else self.value >= self.limit
        return self.value < self.limit if self.strict else self.value <= self.limit

    def shown(self, value: float) -> str:
        return f"{value:.0f} MB" if self.unit == "MB" else f"{value:.2f}{self.unit}"


def check_targets(targets: Sequence[Target], width: int = 52, **tags: Any) -> list[dict[str, Any]]:
    """Print ``PASS/FAIL label measured V (limit L)`` per target; return them for the JSON."""
    out = []
    for t in targets:
        print(f"  {'PASS' if t.ok else 'FAIL'}  {t.label:<{width}} measured {t.shown(t.value)} "
              f"(limit {t.shown(t.limit)})")
        out.append({**tags, "target": t.label.strip(), "value": round(t.value, 4), "limit": round(t.limit, 4),
                    "unit": t.unit, "pass": t.ok})
    return out


def environment() -> dict[str, Any]:
    """The machine a result came from, for the JSON output."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def print_header(title: str) -> None:
    """The benchmark's first lines: what runs, and on which interpreter and machine."""
    print(title)
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.platform()}")


def add_common_args(p: argparse.ArgumentParser, *, size_gb: float | None, size_help: str, repeat: int = 3,
                    workdir: Path | None = None, quiet: bool = True, keep_help: str = "keep the inputs afterwards",
                    profile_help: str | None = None) -> None:
    """The flags every file-based benchmark shares (``--child`` is internal: run one measurement and
    print its JSON line). ``profile_help`` adds ``--profile`` (cProfile of the timed operation)."""
    if size_gb is not None:
        p.add_argument("--size-gb", type=float, default=size_gb, help=f"{size_help} (default {size_gb})")
    p.add_argument("--repeat", type=int, default=repeat,
                   help=f"runs per measurement; the median is kept (default {repeat})")
    if workdir is not None:
        p.add_argument("--workdir", type=Path, default=workdir, help=f"work folder (default {workdir})")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write every sample and result here")
    if quiet:
        p.add_argument("--max-background", type=float, default=0.1, metavar="FRACTION",
                       help="before each run, wait until other processes use less than this fraction "
                            "of the CPUs (default 0.1)")
        p.add_argument("--quiet-timeout", type=float, default=120.0, metavar="S",
                       help="longest wait for a quiet machine before running anyway (default 120)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic inputs (default 0)")
    p.add_argument("--keep", action="store_true", help=keep_help)
    if profile_help:
        p.add_argument("--profile", action="store_true",
                       help=f"run {profile_help} under cProfile and print its top functions (slower)")
    p.add_argument("--child", help=argparse.SUPPRESS)


def main_flow(args: argparse.Namespace, child: Callable[[], None], benchmark: Callable[[], Any],
              cleanup: Callable[[], None]) -> None:
    """A benchmark's ``main``: with ``--child``, one measurement in this (fresh) process; otherwise
    the benchmark, its large files removed even when it fails (they are GBs), then ``--json``."""
    if getattr(args, "workdir", None) is not None:
        args.workdir = Path(args.workdir).resolve()  # children run with the same, absolute folder
    if args.child:
        child()
        return
    try:
        out = benchmark()
    finally:
        cleanup()
    write_json(out, args.json)


def write_json(out: Any, path: Path | str | None) -> None:
    """With ``--json OUT``: every sample and result, for later comparison."""
    if path:
        Path(path).write_text(json.dumps(out, indent=2))
        print(f"\nresults written to {path}")


__all__ = [
    "GB", "MB", "PAGE", "Column", "Measurement", "MemoryWatcher", "ProcessResult", "Quiet", "Target",
    "add_common_args", "background_cpu", "cp_sample", "background_line", "check_targets", "child_main", "environment",
    "evict", "fsync_path", "import_first", "main_flow", "median_time", "measure", "nbytes", "package_origin", "peak_rss",
    "preload", "print_header", "print_table", "proc_status", "profiled", "ratio", "read_ahead_bytes",
    "repeat_runs", "resident_bytes", "rss_now", "run_child", "run_process", "sample_runs", "settle",
    "tensor_bytes", "timed", "wait_for_quiet", "write_json",
]
