"""The benchmark harness: paired variants alternate, the table lists measured rows by number, the results file
holds what the footer says, and `bench/run.py --rows` names only rows that exist."""

import datetime
import json

import pytest

from bench import harness, run
from bench.rows import ORDER, ROWS, Row, table_lines


def test_interleaving_runs_every_variant_once_a_round_and_reverses_the_order_every_other_round():
    order = []
    variants = {name: (lambda name=name: order.append(name)) for name in "abc"}
    samples = harness.interleave(variants, 3, measure=lambda name, run: run() or name.upper(), show=str)
    assert order == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert samples == {"a": ["A"] * 3, "b": ["B"] * 3, "c": ["C"] * 3}


def test_the_table_lists_the_measured_rows_by_number_and_leaves_out_the_others():
    def lines(numbers, results):
        return [(f"measured {numbers}", "ours", "other", "ratio")]

    rows = [Row("P", "paper", "nothing", print, lines), Row("5", "load", "weights", print, lines),
            Row("3", "overhead", "serving", print, lines), Row("1", "missing", "weights", print, lines),
            Row("5", "rss", "serving", print, lines)]
    results = {"paper": 1, "load": 2, "serving": {"overhead": 3, "rss": 4}}
    assert [line[:2] for line in table_lines(results, rows)] == [
        ("3", "measured 3"), ("5", "measured 2"), ("5", "measured 4"), ("P", "measured 1")]


def test_every_registered_row_has_its_own_name_and_a_number_of_the_table():
    assert len({row.name for row in ROWS}) == len(ROWS)
    assert {row.number for row in ROWS} == set(ORDER)
    assert {row.needs for row in ROWS} == {"nothing", "weights", "serving"}


def test_write_results_writes_the_json_and_prints_the_table_then_a_footer_naming_the_file(tmp_path, capsys):
    results = {"machine": harness.machine(), "numbers": {"median": 1.5}}
    path = harness.write_results(results, "| # | table |", tmp_path, suffix="-check")
    assert path == tmp_path / f"{datetime.date.today().isoformat()}-check.json"
    written = json.loads(path.read_text())
    assert written["table"] == "| # | table |" and written["numbers"] == {"median": 1.5}
    assert len(written["machine"]["load_average_at_end"]) == 3 and written["total_seconds"] > 0
    table, footer = capsys.readouterr().out.split("\n\n")
    assert table == "| # | table |"
    assert footer.endswith(f" · {path}\n") and " at start, " in footer
    assert f"torch {written['machine']['versions']['torch']} (" in footer


def test_rows_are_picked_by_number_or_name_and_an_unknown_one_is_refused_with_the_list(capsys):
    with pytest.raises(SystemExit) as exit:
        run.main(["--rows", "1,compiled,nine"])
    assert exit.value.code == 2
    error = capsys.readouterr().err
    assert "--rows: no row nine; rows: 2 flops, P on_paper, 1 work_per_image" in error


def test_rows_picked_by_number_or_name_keep_their_order_less_what_no_serve_skips():
    parser = run.arguments()
    picked = run.picked(parser.parse_args(["--rows", "5,adapters", "--no-serve"]), parser)
    assert [row.name for row in picked] == ["load", "adapters", "warm_up_seconds"]
    everything = run.picked(parser.parse_args(["--no-compile"]), parser)
    assert [row.name for row in everything] == [row.name for row in ROWS if row.number != "7"]
