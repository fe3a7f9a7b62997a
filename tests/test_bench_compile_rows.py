"""Row 7's compile-cache lines: the second replica against the first, and the whole-network compile quoted as an
earlier measurement, never as this run's."""

from bench.rows.compile import WHOLE_NETWORK, replica_lines, summarised


def replica(cpu: float, wall: float, hits: int, misses: int) -> dict:
    return {"warm_up_cpu_seconds": cpu, "warm_up_seconds": wall, "graphs_traced": 8, "max_batch_size": 4,
            "fxgraph_cache": {"hits": hits, "misses": misses, "bypasses": 0}}


def test_the_second_replica_is_given_as_a_share_of_the_first_and_the_whole_network_compile_as_an_earlier_figure():
    pairs = [{"first": replica(40.0, 80.0, 0, 8), "second": replica(10.0, 16.0, 8, 0)},
             {"first": replica(50.0, 100.0, 0, 8), "second": replica(20.0, 30.0, 8, 0)}]
    started = summarised(pairs)
    second, regional = replica_lines(started, {})
    assert second[1] == ("15.00 CPU-s [10.00–20.00], 23.00 s [16.00–30.00] wall; 8 graphs traced, inductor FX graph "
                         "cache 8/8 hits / 0/0 misses")
    assert "0/0 hits / 8/8 misses" in second[2]
    assert second[3] == "0.33× CPU-s [0.25–0.40], 0.25× wall [0.20–0.30] (second / first, per pair; target ≤ 0.20)"
    assert regional[1].startswith("45.00 CPU-s [40.00–50.00]")
    assert "EARLIER measurement, not this run's" in regional[2]
    assert f"{WHOLE_NETWORK['warm_up_cpu_seconds']} CPU-s" in regional[2]
    assert regional[3].startswith(f"{45 / WHOLE_NETWORK['warm_up_cpu_seconds']:.2f}× CPU-s (this run's median")
