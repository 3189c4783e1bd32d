"""Sampling arguments, and a host-side reference for choosing a token from logits.

Generation does not use :func:`sample`: the step graph samples on the backend with the ``sample``
op (``tinygraph.ops.sample``), so only the token id leaves the device. :func:`sample` runs that
op's NumPy reference on a host array, with the same semantics and random stream.
"""
from __future__ import annotations

import numpy as np

from tinygraph.ops import OPS, sample_params

#: temperatures below this are greedy (argmax). The ``sample`` op divides the logits by the
#: temperature in float32: at 1e-38 a logit above ~3.4 overflows to +inf and the op returns the
#: first such index, not the best one. From 1e-6 up a logit would have to exceed 3.4e32 to overflow,
#: and below it sampling is argmax anyway except among logits within ~1e-5 of the largest
#: (their weight exp(-gap / t) underflows beyond that).
MIN_TEMPERATURE = 1e-6


def effective_temperature(temperature: float) -> float:
    """The temperature generation runs with: 0.0 (greedy) below :data:`MIN_TEMPERATURE`."""
    return 0.0 if temperature < MIN_TEMPERATURE else float(temperature)


def check_sampling_args(temperature: float, top_k: int, top_p: float, max_new_tokens: int) -> None:
    """Raise ValueError naming the bad value."""
    if not (isinstance(max_new_tokens, (int, np.integer)) and max_new_tokens >= 0):
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if not (isinstance(top_k, (int, np.integer)) and top_k >= 0):
        raise ValueError(f"top_k must be an integer >= 0 (0 = no limit), got {top_k!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")


def sample(logits: np.ndarray, temperature: float, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
           counter: int = 0) -> int:
    """One token id from host ``logits`` [vocab], as the ``sample`` op would pick it with these
    parameters (``temperature == 0``: argmax; ``top_k`` 0: no limit; ``top_p`` 1: no limit)."""
    fp, ip = sample_params(temperature, top_k, top_p, seed, counter)
    logits = np.asarray(logits, np.float32).reshape(1, -1)
    return int(OPS["sample"].reference({}, logits, fp, ip)[0])
