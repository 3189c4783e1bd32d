"""Property tests: views, reshape, permute and cpy agree with NumPy's own striding."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

import tinygraph as tg

shapes = st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple)


@settings(max_examples=80, deadline=None)
@given(shapes, st.data())
def test_permute_reshape_match_numpy(shape, data):
    axes = tuple(data.draw(st.permutations(range(len(shape)))))
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    sess = tg.Session(backend="numpy")
    g = sess.graph()
    t = g.input(shape, tg.float32)
    p = tg.permute(t, axes)
    r = tg.reshape(p, (-1,))
    g.output(tg.cont(p), r)
    cp, rr = sess.compute(g, {t: x})
    np.testing.assert_array_equal(cp, x.transpose(axes))
    np.testing.assert_array_equal(rr, x.transpose(axes).reshape(-1))


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.data())
def test_strided_view_and_cpy_slot(rows, cols, data):
    """A random in-bounds 2-D window of a persistent buffer: read it, then write it, as NumPy would."""
    n = 64
    r0 = data.draw(st.integers(0, n // cols - rows if n // cols >= rows else 0))
    if r0 * cols + rows * cols > n:
        return
    base = np.random.default_rng(rows * 7 + cols).standard_normal(n).astype(np.float32)
    sess = tg.Session(backend="numpy")
    B = sess.persistent((n,), tg.float32, name="B")
    sess.finalize()
    sess.upload(B, base)
    g = sess.graph()
    src = g.input((cols, rows), tg.float32)
    window = tg.view(B, (rows, cols), (cols, 1), offset=r0 * cols)
    before = tg.cont(window)
    tg.cpy(tg.transpose(src), window)  # writes the transposed input into the window
    after = tg.cont(tg.view(B, (n,)))
    g.output(before, after)
    val = np.random.default_rng(1).standard_normal((cols, rows)).astype(np.float32)
    b, a = sess.compute(g, {src: val})
    ref = base.copy()
    np.testing.assert_array_equal(b, ref[r0 * cols: (r0 + rows) * cols].reshape(rows, cols))
    ref[r0 * cols: (r0 + rows) * cols] = val.T.reshape(-1)
    np.testing.assert_array_equal(a, ref)
