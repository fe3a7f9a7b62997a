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
