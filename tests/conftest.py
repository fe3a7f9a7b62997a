import numpy as np
import pytest
import torch

from stable_diffusion_xl import demo_weights
from stable_diffusion_xl.engine import Engine

# Two threads on a two-core machine shared with other work were up to 60x slower than one.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory):
    """A weights folder holding only freshly built demo weights."""
    root = tmp_path_factory.mktemp("weights")
    demo_weights.build(root)
    return root


@pytest.fixture(scope="session")
def engine(weights_dir):
    return Engine.load(weights_dir, demo=True)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def max_pixel_difference(first, second) -> int:
    """Largest per-channel difference; batch size changes float rounding by at most a level or two."""
    assert first.size == second.size
    return int(np.abs(pixels(first) - pixels(second)).max())
