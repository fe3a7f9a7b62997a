"""The rows of bench/run.py's table, registered in one place: ROWS, in the order they are measured.

A row is two small functions in the file of its group: `measure(bench)` returns its numbers (kept in the JSON
under the row's name; serving rows under "serving"), `lines(numbers, results)` turns them into table lines of
(measurement, ours, compared with, ratio). The table lists rows by number, in this order within a number.

    paper.py     counted, not timed: FLOPs (2) and GPU figures on paper (P)
    engine.py    the Engine in process on the demo weights: recipes (1), load (5), adapters, prompts, safety (6)
    serving.py   through Ray Serve, its gRPC and HTTP proxies: overhead (3), batching (4), cold start and memory
                 (5), the peer APIs (8); one Ray Serve session runs them all, in order
    edits.py     the Engine in process: an edit against text-to-image at three strengths, the edit pipelines'
                 memory (9)
    training.py  a LoRA training step and its peak memory (T)
    compile.py   compiled against eager, a second replica with the compile cache filled (7); last, as compiling
                 changes process-wide torch settings
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.rows import compile, edits, engine, paper, serving, training


@dataclass
class Bench:
    """What a row's `measure` gets: the command line, the numbers so far, and what its `needs` set up."""

    args: argparse.Namespace  # runs, serve_runs, batch_runs, output
    results: dict
    weights_root: Path | None = None  # needs "weights" or "serving": a root holding demo weights
    engine: Any = None  # ... and an Engine loaded from them in this process
    serving: Any = None  # needs "serving": the running Ray Serve session (serving.Session)


@dataclass(frozen=True)
class Row:
    number: str  # its number in the table: "1" to "9", "T" (training) or "P" (on paper)
    name: str  # its key in the results and its name for `run.py --rows`
    needs: str  # "nothing", "weights" (demo weights and an Engine in process) or "serving" (Ray Serve up too)
    measure: Callable[[Bench], Any]
    lines: Callable[[Any, dict], list[tuple]] = lambda numbers, results: []  # its numbers, all results


ROWS = [
    Row("2", "flops", "nothing", paper.flops, paper.flops_lines),
    Row("P", "on_paper", "nothing", paper.on_paper, paper.on_paper_lines),
    Row("1", "work_per_image", "weights", engine.work_per_image, engine.work_per_image_lines),
    Row("5", "load", "weights", engine.load_times, engine.load_lines),
    Row("6", "adapters", "weights", engine.adapter_switching, engine.adapter_lines),
    Row("6", "prompts", "weights", engine.prompt_encoding, engine.prompt_lines),
    Row("6", "safety_checker", "weights", engine.safety_checker_share, engine.safety_checker_lines),
    Row("5", "warm_up_seconds", "weights", engine.warm_up),  # shown in the load row's line
    Row("9", "edits", "weights", edits.edit_vs_text, edits.edit_lines),
    Row("5", "cold_start", "serving", serving.cold_start, serving.cold_start_lines),
    Row("3", "overhead", "serving", serving.overhead, serving.overhead_lines),
    Row("4", "batching", "serving", serving.batching, serving.batching_lines),
    Row("4", "across_calls", "serving", serving.across_calls, serving.across_call_lines),
    Row("8", "peer_apis", "serving", serving.peer_apis, serving.peer_api_lines),
    Row("5", "rss", "serving", serving.memory, serving.memory_lines),  # last: its sampling thread would slow the rest
    Row("T", "training", "weights", training.training_step, training.training_lines),
    Row("7", "compiled", "weights", compile.compiled_vs_eager, compile.compiled_lines),
    Row("7", "compile_cache", "weights", compile.replicas, compile.replica_lines),  # two fresh processes
]
ORDER = "123456789TP"


def numbers_of(row: Row, results: dict):
    """Where a row's numbers are kept in the results; None when it was not measured."""
    return (results.get("serving", {}) if row.needs == "serving" else results).get(row.name)


def table_lines(results: dict, rows: list[Row] = ROWS) -> list[tuple]:
    """Every measured row's lines, rows by number, each line led by its row's number."""
    measured = [row for row in rows if numbers_of(row, results) is not None]
    return [(row.number, *line) for row in sorted(measured, key=lambda row: ORDER.index(row.number))
            for line in row.lines(numbers_of(row, results), results)]


def keep(row: Row, results: dict, numbers) -> None:
    """Keeps a row's numbers where numbers_of finds them (a row that measured nothing returns None)."""
    if numbers is not None:
        (results.setdefault("serving", {}) if row.needs == "serving" else results)[row.name] = numbers
