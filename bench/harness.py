"""What every benchmark shares: timing, interleaving, the table, the machine and the results file.

bench/run.py (CPU, demo weights) and bench/gpu.py (a GPU, the real weights) both use it. A benchmark:

    from bench import harness

    results = {"machine": harness.machine()}        # header: CPU, GPU, load average at start, versions, git
    variants = {"ours": run_ours, "upstream": run_upstream}   # name -> a callable doing one unit of work
    seconds = harness.interleave(variants, rounds=5)           # name -> [seconds], rounds in alternating order
    numbers = {name: harness.summary(values) for name, values in seconds.items()}   # median, min, max, q1, q3
    table = harness.markdown([("1", "what is measured", harness.seconds(numbers["ours"]),
                               f"upstream: {harness.seconds(numbers['upstream'])}",
                               harness.ratio(numbers["upstream"], numbers["ours"], "upstream / ours"))])
    harness.write_results(results, table, output_folder, suffix="-gpu")   # the ending: see its docstring

- `timed(run)` seconds of one call (perf_counter); `summary(values)` median, min, max, quartiles, n, values.
- `interleave(variants, rounds, measure=..., label=..., show=...)`: every round runs each variant once, in order
  on even rounds and reversed on odd ones, so paired variants see the same machine state (a shared machine
  drifts); `measure(name, run)` takes one sample (default: `timed(run)`), `show(sample)` writes it in the log.
  `alternate(variants, index)` is that order alone, for loops that need more than one sample per call.
- Cells: `seconds(s, "ms")` "median unit [min–max]", `rate(s)` img/s, `tflop`, `mb`, `ratio(other, ours, label)`,
  `speedup(case, baseline, label)` on images per second; `markdown(lines)` the table of
  (number, measurement, ours, compared with, ratio) tuples, or of other columns with `head`.
- `log(message)`: progress on stderr, with seconds since start; stdout keeps only the table and the footer.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"  # git-ignored
STARTED = time.perf_counter()
PACKAGES = ("diffusers", "transformers", "torchao", "ray")  # the versions machine() records besides torch's


def log(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ timing

def timed(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def summary(values: list[float]) -> dict:
    ordered = sorted(values)
    q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive") if len(ordered) > 1 else ordered * 3
    return {"median": statistics.median(ordered), "min": ordered[0], "max": ordered[-1], "q1": q1, "q3": q3,
            "n": len(ordered), "values": [round(v, 6) for v in values]}


def alternate(variants: dict, index: int) -> list:
    """The variants in order on even rounds and in reverse on odd ones, so no variant always runs first."""
    items = list(variants.items())
    return items if index % 2 == 0 else items[::-1]


def interleave(variants: dict[str, Callable[[], Any]], rounds: int, *,
               measure: Callable[[str, Callable[[], Any]], Any] = lambda name, run: timed(run),
               label: str = "run", show: Callable[[Any], str] = lambda sample: f"{sample:.2f} s") -> dict[str, list]:
    """`rounds` rounds of every variant once, alternating the order; name -> its samples, one per round."""
    samples: dict[str, list] = {name: [] for name in variants}
    for index in range(rounds):
        for name, run in alternate(variants, index):
            samples[name].append(measure(name, run))
        log(f"  {label} {index + 1}/{rounds}: " + ", ".join(f"{name} {show(values[-1])}"
                                                            for name, values in samples.items()))
    return samples


# ------------------------------------------------------------------------------------------------ table

def seconds(s: dict, unit: str = "s") -> str:
    scale = 1000 if unit == "ms" else 1
    digits = 0 if unit == "ms" else 2
    return f"{s['median'] * scale:.{digits}f} {unit} [{s['min'] * scale:.{digits}f}–{s['max'] * scale:.{digits}f}]"


def rate(s: dict) -> str:
    return f"{s['median']:.2f} img/s [{s['min']:.2f}–{s['max']:.2f}]"


def tflop(value: float) -> str:
    return f"{value / 1e12:,.1f} TFLOP"


def mb(value: int) -> str:
    return f"{value / 2**20:,.0f} MB"


def ratio(other: dict, ours: dict, label: str) -> str:
    return f"{other['median'] / ours['median']:.2f}× ({label})"


def speedup(case: dict, baseline: dict, label: str) -> str:
    return f"{case['images_per_second']['median'] / baseline['images_per_second']['median']:.2f}× img/s ({label})"


def markdown(lines: list[tuple], head: tuple = ("#", "measurement", "ours", "compared with", "ratio")) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(cell) for cell in line) + " |" for line in lines]
    return "\n".join(out)


# ------------------------------------------------------------------------------------- header and footer

def machine() -> dict:
    """What the numbers were measured on, with the load average at the start (write_results adds the end's).
    Versions are read from the installed packages' metadata, so a GPU machine without Ray still has a header."""
    import psutil  # accelerate's dependency, so there wherever the pipelines run

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", None
    gpu = torch.cuda.is_available()
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": cpu,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if gpu else None,
        "gpu_memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 2**30) if gpu else None,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {"torch": torch.__version__, **{package: installed(package) for package in PACKAGES}},
        "git_commit": commit,
        "git_tracked_changes": dirty,
    }


def installed(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def results_path(output: Path, suffix: str = "") -> Path:
    return output / f"{datetime.date.today().isoformat()}{suffix}.json"


def footer(results: dict, path: Path) -> str:
    """One line under the table: when, on what, under which load, for how long, and where the numbers are."""
    info = results["machine"]
    threads = info["torch_threads"]
    gpu = f"{info['gpu']} ({info['gpu_memory_gb']} GB)" if info.get("gpu") else "no GPU"
    cuda = f", CUDA {torch.version.cuda}" if info.get("gpu") else ""
    return (f"{info['date']} · {info['cpu_model']} · {info['logical_cores']} cores · {info['ram_gb']} GB · "
            f"torch {info['versions']['torch']} ({threads} thread{'s' if threads != 1 else ''}{cuda}) · {gpu} · "
            f"load average {info['load_average_at_start'][0]} at start, {info['load_average_at_end'][0]} at end · "
            f"total {results['total_seconds']:.0f} s · {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")


def write_results(results: dict, table: str, output: Path = RESULTS, suffix: str = "") -> Path:
    """The ending of every benchmark: adds the load average at the end, the total seconds and the table to
    `results` (which holds "machine" from machine()), writes it all to <output>/<date><suffix>.json, prints the
    table and the footer on stdout, and returns the file's path."""
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["total_seconds"] = time.perf_counter() - STARTED
    results["table"] = table
    output.mkdir(parents=True, exist_ok=True)
    path = results_path(output, suffix)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(table)
    print(f"\n{footer(results, path)}")
    log(f"done in {results['total_seconds']:.0f} s; numbers in {path}")
    return path


# ------------------------------------------------------------------------------------------- memory

class RssSampler(threading.Thread):
    """Samples one process's RSS every few milliseconds; keeps the peak per labelled phase. As a context manager:
    started on entry, stopped on exit."""

    def __init__(self, process, interval: float = 0.005):
        super().__init__(daemon=True)
        self.process, self.interval, self.phase = process, interval, "idle"
        self.peaks: dict[str, int] = {}
        self._done = threading.Event()

    def run(self):
        import psutil

        while not self._done.is_set():
            try:
                rss = self.process.memory_info().rss
            except psutil.Error:
                return
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)
            time.sleep(self.interval)

    def stop(self):
        self._done.set()
        self.join(timeout=5)

    def __enter__(self) -> RssSampler:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def high_water_mark(pid: int) -> int | None:
    """The kernel's peak RSS of a process since it started (VmHWM, Linux), in bytes."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
