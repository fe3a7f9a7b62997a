"""The GPU benchmark (`make bench-gpu`) refuses to run, in one line, without what it measures."""

import torch

from bench import gpu


def test_without_a_gpu_it_says_so_and_stops(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main([]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: no CUDA GPU: torch {torch.__version__} ") and error.count("\n") == 1


def test_without_the_real_weights_it_says_so_and_stops(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gpu.main(["--weights", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"error: no real weights in {tmp_path}: fetch them (about 12 GB) with "
                                       "`python -m stable_diffusion_xl fetch-weights`\n")


def test_a_run_cut_short_still_has_its_table(capsys):
    """Each stage adds its numbers as it finishes: the table shows those and marks the rest not measured."""
    seconds = {"seconds_per_image": {"median": 2.0, "n": 2}, "peak_memory_bytes": 12 * 2**30}
    data = {"machine": {"gpu": "NVIDIA H100 80GB HBM3", "capability": "9.0", "fp16_matmul_tflops": 700.0},
            "flops": {"ours": {"total_flops": 560e12}, "upstream": {"total_flops": 727e12}},
            "eager": {"load_seconds": 3.0, "warm_up_seconds": 9.0, "graphs_compiled_in_warm_up": 0,
                      **{f"batch_{b}": dict.fromkeys(("ours", "raw_diffusers", "upstream"), seconds) for b in (1, 4)}},
            "compiled_error": "not finished within the 300 s left of the budget",
            "cached": {"load_seconds": 4.0, "warm_up_seconds": 20.0, "graphs_compiled_in_warm_up": 24,
                       "compile_cache_entries_at_start": 1}}
    lines = gpu.table(data).splitlines()
    assert ("| eager, batch 1, s/image (median of 2) | 2.000 s/image · 0.50 img/s · 280 TFLOP/s (40% of the matmul "
            "peak) · 12.0 GiB peak |") in "\n".join(lines)
    assert "| compiled + fp8, batch 4 | not measured | not measured | not measured |" in lines
    assert ("| cold start: eager | Engine.load 3.0 s + warm-up 9.0 s = 12.0 s | 0 graphs traced in warm-up |  |"
            in lines)
    assert ("| cold start: compiled, empty caches | not measured: not finished within the 300 s left of the budget |  "
            "|  |") in lines
    assert ("| cold start: compiled, compile cache filled (second replica) | Engine.load 4.0 s + warm-up 20.0 s = "
            "24.0 s | 24 graphs traced in warm-up; compile cache: 1 entries at start |  |") in lines
    assert "| GPU; fp16 matmul 8192³ | NVIDIA H100 80GB HBM3 (compute capability 9.0) | 700 TFLOP/s |  |" in lines
