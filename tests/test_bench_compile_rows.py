"""Row 7's compile-cache lines: the second replica against the first, and the whole-network compile quoted as an
earlier measurement, never as this run's."""

from bench.rows.compile import WHOLE_NETWORK, replica_lines


def replica(cpu: float, wall: float, hits: int, misses: int) -> dict:
    return {"warm_up_cpu_seconds": cpu, "warm_up_seconds": wall, "graphs_traced": 8, "max_batch_size": 4,
            "fxgraph_cache": {"hits": hits, "misses": misses, "bypasses": 0}}


def test_the_second_replica_is_given_as_a_share_of_the_first_and_the_whole_network_compile_as_an_earlier_figure():
    second, regional = replica_lines({"first": replica(40.0, 80.0, 0, 8), "second": replica(10.0, 16.0, 8, 0)}, {})
    assert second[1].startswith("10.0 CPU-s, 16.0 s wall; 8 graphs traced, inductor FX graph cache 8 hits / 0 misses")
    assert "0 hits / 8 misses" in second[2]
    assert second[3] == "0.25× CPU-s, 0.20× wall (second / first; target ≤ 0.20)"
    assert regional[1] == "40.0 CPU-s, 80.0 s wall"
    assert "EARLIER measurement, not this run's" in regional[2] and f"{WHOLE_NETWORK['warm_up_cpu_seconds']} CPU-s" \
        in regional[2]
    assert regional[3] == f"{40 / WHOLE_NETWORK['warm_up_cpu_seconds']:.2f}× CPU-s (this run / earlier; target ≤ 0.33)"
