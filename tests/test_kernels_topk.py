"""The sampler's top-k kernel (engine/runtime/kernels/topk.py) against its NumPy reference and the
definition: the first k positions of a stable sort by descending value (ties: lower position first)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from engine.runtime.kernels.topk import BLOCK, top_k, top_k_ref


def _definition(vals: np.ndarray, k: int) -> np.ndarray:
    return np.lexsort((np.arange(vals.size), -vals))[:k]


def _cases():
    rng = np.random.default_rng(4)
    n = 262_144
    x = (3 * rng.standard_normal(n)).astype(np.float32)
    yield "logits", x
    yield "ties", np.round(x).astype(np.float32)  # ties at and across the cut
    yield "ascending", np.sort(x)  # every block above the threshold comes last
    yield "descending", np.sort(x)[::-1].copy()
    yield "constant", np.full(1000, 1.5, np.float32)
    y = x[:5000].copy()
    y[::3] = -np.inf
    yield "-inf", y
    yield "only -inf", np.full(300, -np.inf, np.float32)
    z = np.full(10 * BLOCK + 7, -1.0, np.float32)
    z[[5, 64, 65, 640, 10 * BLOCK + 6]] = 2.0  # the maxima in a partial last block too
    yield "sparse", z


@pytest.mark.parametrize("name", [c[0] for c in _cases()])
def test_top_k_is_the_reference_and_the_definition(name):
    vals = dict(_cases())[name]
    for k in (1, 2, 5, 40, 64, 128, vals.size - 1, vals.size):
        want = _definition(vals, k)
        np.testing.assert_array_equal(top_k_ref(vals, k), want)
        if k <= 1000:  # the kernel serves small k (the sampler uses it up to 128)
            np.testing.assert_array_equal(top_k(vals, k), want)


FEW = st.sampled_from([-np.inf, -2.0, -0.0, 0.0, 0.5, 1.0, 3.0])


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, st.integers(1, 700), elements=FEW), st.integers(1, 200))
def test_top_k_on_few_distinct_values(vals, k):
    want = _definition(vals, k)
    np.testing.assert_array_equal(top_k(vals, k), want)
    np.testing.assert_array_equal(top_k_ref(vals, k), want)
