"""What the torch and the numpy Q-networks must agree on: MinAtar's torso constants and the weight check.

Kept in a module of its own, below both, so that neither network module imports the other to share it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# MinAtar's reference torso (one 3x3 conv of 16 channels), the same in common/networks.py and numpy.
MINATAR_CONV_CHANNELS = 16
MINATAR_KERNEL = 3


def check_weights(expected: Mapping[str, tuple[int, ...]], arrays: Mapping[str, np.ndarray]) -> None:
    """Raise ValueError unless `arrays` has exactly the names of `expected`, each with its shape."""
    if set(arrays) != set(expected):
        missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
        raise ValueError(f"weights do not fit this network: missing {missing[:3]}, unexpected {extra[:3]}")
    for name, shape in expected.items():
        if tuple(arrays[name].shape) != tuple(shape):
            raise ValueError(f"weights do not fit this network: {name} {arrays[name].shape} vs {tuple(shape)}")
