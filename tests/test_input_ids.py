"""Token ids of one sequence: 1-D or [1, T]; batches, deeper nesting, ragged lists and floats are
refused by name instead of being flattened into one sequence."""
from __future__ import annotations

import pytest

from tinygraph.models import load_model


def test_nested_input_ids_are_refused_not_flattened() -> None:
    m = load_model("tests/fixtures/llama", backend="numpy")
    one = m.generate([3, 17, 40], max_new_tokens=3, temperature=0, ignore_eos=True)
    assert m.generate([[3, 17, 40]], max_new_tokens=3, temperature=0, ignore_eos=True) == one  # [1, T]
    for bad in ([[3, 17], [40, 5]], [[[3, 17, 40]]], [[3, 17], [40]], [3.0, 17.0]):
        with pytest.raises(ValueError, match="input_ids"):
            m.generate(bad, max_new_tokens=2, temperature=0)
    with pytest.raises(ValueError, match="input_ids"):
        m([[3, 17], [40, 5]])
    with pytest.raises(ValueError, match="ids"):
        m.step([[3, 17], [40, 5]], 0)
