"""The host side of the GPU libraries' plans (csrc/plan), on the CPU: the LRU plan cache the cuBLASLt
matmuls and the cuDNN convolutions keep, and the matmul planner (which operands cuBLASLt reads in
place, as N or T, which batch dims are looped on the host, which operands are copied first, and the
key of the plan). Each plan is also run through an emulation of cuBLASLt's strided-batched GEMM on
the operands' flat memory and must give NumPy's product: a key that misdescribes the operands
fails here, not only on a GPU."""

import numpy as np
import pytest

import dutycycle as dc
from dutycycle import _C

F32 = dc.float32.id
KEY = 8


def key(s):
    return s.encode().ljust(KEY, b"\0")


# ---- the plan cache ------------------------------------------------------------------------------


def test_cache_hits_misses_and_least_recently_used_eviction():
    c = _C.PlanCache(3, KEY)
    a, fa = c.get(key("a"))
    b, fb = c.get(key("b"))
    cc, fc = c.get(key("c"))
    assert (fa, fb, fc) == (True, True, True) and len({a, b, cc}) == 3
    assert c.get(key("a")) == (a, False)  # a is now the most recently used: b is the oldest
    d, fd = c.get(key("d"))
    assert fd and c.released() == [b]
    assert c.stats() == {"slots": 3, "used": 3, "hits": 1, "misses": 4, "evictions": 1}
    assert c.get(key("b"))[1] is True  # b was evicted: built again (evicting c, now the oldest)
    assert c.released() == [b, cc]
    assert c.get(key("a")) == (a, False) and c.get(key("d")) == (d, False)


def test_cache_never_evicts_the_plan_got_last():
    # conv.cu holds the full-batch plan while it gets the remainder's: two slots are enough
    c = _C.PlanCache(2, KEY)
    for i in range(20):
        full, _ = c.get(key("full"))
        last, _ = c.get(key(f"rem{i}"))
        assert full != last and c.get(key("full")) == (full, False)
    assert full not in c.released()


def test_cache_drop_frees_the_slot_and_the_key_is_built_again():
    c = _C.PlanCache(4, KEY)
    a, _ = c.get(key("a"))
    c.get(key("b"))
    c.drop(a)  # a build failed half way: its payload is released, its slot free
    assert c.released() == [a] and c.stats()["used"] == 1
    a2, fresh = c.get(key("a"))
    assert fresh and a2 != a
    for k in "cd":
        c.get(key(k))
    assert c.stats()["evictions"] == 0  # the dropped slot was reused before any eviction
    with pytest.raises(KeyError, match="no cached plan"):
        c.drop(a)


def test_cache_clear_releases_everything_and_keeps_counts():
    c = _C.PlanCache(2, KEY)
    x, _ = c.get(key("x"))
    y, _ = c.get(key("y"))
    c.clear()
    assert sorted(c.released()) == sorted([x, y])
    assert c.stats() == {"slots": 2, "used": 0, "hits": 0, "misses": 2, "evictions": 0}
    assert c.get(key("x"))[1] is True
    del c  # frees the remaining plan (no crash, no leak under make sanitize)


def test_cache_keys_compare_every_byte():
    c = _C.PlanCache(4, 16)
    a = bytes(16)
    b = bytes(15) + b"\1"
    assert c.get(a)[1] and c.get(b)[1] and not c.get(a)[1] and not c.get(b)[1]


def test_cache_bad_arguments():
    with pytest.raises(ValueError, match="1 slots"):
        _C.PlanCache(1, KEY)
    with pytest.raises(ValueError, match="0-byte keys"):
        _C.PlanCache(4, 0)
    c = _C.PlanCache(2, KEY)
    with pytest.raises(ValueError, match="a key of 3 bytes, the cache's keys have 8"):
        c.get(b"abc")
    with pytest.raises(TypeError):
        c.get("a string")


# ---- the matmul planner --------------------------------------------------------------------------


def view(x):
    """(shape, element strides, element offset into its base) of a NumPy view."""
    base = x
    while base.base is not None:
        base = base.base
    es = x.itemsize
    off = (x.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // es
    return x.shape, tuple(s // es for s in x.strides), off, base.reshape(-1)


def plan_of(a, b, addr_a=1 << 20, addr_b=1 << 22, **kw):
    M, N = a.shape[-2], b.shape[-1]
    out = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (M, N)
    sa, ta, oa, _ = view(a)
    sb, tb, ob, _ = view(b)
    es = a.itemsize
    return _C.matmul_plan(out, sa, ta, sb, tb, a_addr=addr_a + oa * es, b_addr=addr_b + ob * es, **kw), out


def col_major(buf, p, rows, cols, ld, op):
    r = np.arange(rows)[:, None]
    c = np.arange(cols)[None, :]
    m = buf[p + r + c * ld]
    return m.T if op == 1 else m


def emulate(plan, a, b, out_shape):
    """Run the plan as cuBLASLt would on flat memory: per host-looped outer batch, `batch` GEMMs
    C = op(A) @ op(B) over column-major matrices (cuBLAS's A is our B, its B our A)."""
    k = plan["key"]
    flat = {}
    for name, x, copy in (("a", a, plan["copy_a"]), ("b", b, plan["copy_b"])):
        if copy:  # the kernel first copies it to contiguous scratch: offsets relative to that
            flat[name] = (np.ascontiguousarray(x).reshape(-1), 0)
        else:
            _, _, off, base = view(x)
            flat[name] = (base, off)
    out = np.full(int(np.prod(out_shape)), np.nan, np.float64)
    (abuf, abase), (bbuf, bbase) = flat["a"], flat["b"]
    mn = k["m"] * k["n"]
    for ob, (oa, obb) in enumerate(plan["outer_offsets"]):
        for i in range(k["batch"]):
            ca = col_major(bbuf, bbase + obb + i * k["stride_a"], k["rows_a"], k["cols_a"], k["ld_a"], k["op_a"])
            cb = col_major(abuf, abase + oa + i * k["stride_b"], k["rows_b"], k["cols_b"], k["ld_b"], k["op_b"])
            assert ca.shape == (k["m"], k["k"]) and cb.shape == (k["k"], k["n"])
            c = ca.astype(np.float64) @ cb.astype(np.float64)
            p = ob * plan["inner"] * mn + i * k["stride_c"]
            r = np.arange(k["m"])[:, None]
            cc = np.arange(k["n"])[None, :]
            out[p + r + cc * k["ld_c"]] = c
    return out.reshape(out_shape)


def check(a, b, **kw):
    plan, out = plan_of(a, b, **kw)
    got = emulate(plan, a, b, out)
    np.testing.assert_allclose(got, np.matmul(a.astype(np.float64), b.astype(np.float64)), rtol=1e-12, atol=1e-12)
    return plan


def rand(*shape):
    return np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)


def test_contiguous_matmul_is_read_in_place_as_n():
    p = check(rand(4, 16), rand(16, 8))
    k = p["key"]
    assert not p["copy_a"] and not p["copy_b"] and p["outer"] == 1 and p["inner"] == 1
    assert (k["m"], k["n"], k["k"], k["op_a"], k["op_b"], k["ld_a"], k["ld_b"], k["ld_c"]) == (8, 4, 16, 0, 0, 8, 16, 8)
    assert k["size"] == len(p["key_bytes"]) == 23 * 8  # all int64: no padding bytes for memcmp
    assert k["align_a"] == k["align_b"] == k["align_c"] == 256  # cuBLASLt's default assumption, at most
    assert plan_of(rand(4, 16), rand(16, 8), addr_b=(1 << 22) + 48)[0]["key"]["align_a"] == 16


def test_transposed_operands_are_read_in_place_as_t():
    a = rand(16, 4).T  # (4, 16) with unit-stride rows
    b = rand(8, 16).T
    p = check(a, b)
    assert not p["copy_a"] and not p["copy_b"]
    assert p["key"]["op_a"] == 1 and p["key"]["op_b"] == 1


def test_neither_unit_stride_is_copied_first():
    a = rand(4, 32)[:, ::2]  # strides (32, 2)
    p = check(a, rand(16, 8))
    assert p["copy_a"] and not p["copy_b"] and p["key"]["ld_b"] == 16


def test_batched_strides_and_broadcast_batch():
    a = rand(6, 4, 16)
    b = np.broadcast_to(rand(16, 8), (6, 16, 8))  # batch stride 0: one weight for every matrix
    p = check(a, b)
    k = p["key"]
    assert not p["copy_b"] and p["inner"] == 6 and k["batch"] == 6
    assert k["stride_a"] == 0 and k["stride_b"] == 4 * 16 and k["stride_c"] == 4 * 8


def test_fused_qkv_view_loops_few_outer_batches_and_copies_many():
    def q_of(B, T=8, H=3, D=4):
        qkv = rand(B, T, 3, H, D)
        return qkv[:, :, 0].transpose(0, 2, 1, 3)  # (B, H, T, D): H and B do not collapse into one stride

    def kt_of(B, T=8, H=3, D=4):
        return rand(B, H, D, T)

    few = check(q_of(2), kt_of(2))
    assert not few["copy_a"] and few["split"] == 1 and few["outer"] == 2 and few["inner"] == 3
    many = check(q_of(16), kt_of(16))  # 16 > the 8 host-looped calls worth it: one copy instead
    assert many["copy_a"] and many["split"] == 0 and many["inner"] == 48


def test_key_is_the_same_for_the_same_problem_and_differs_where_the_plan_must():
    a, b = rand(4, 16), rand(16, 8)
    base = plan_of(a, b)[0]["key_bytes"]
    assert plan_of(a, b, addr_a=5 << 20, addr_b=9 << 20)[0]["key_bytes"] == base  # other buffers, same plan
    assert plan_of(a, b, compute=1)[0]["key_bytes"] != base  # tf32
    assert plan_of(a, b, compute=1)[0]["key"]["compute"] == 1
    assert plan_of(a, b, device=1)[0]["key_bytes"] != base
    assert plan_of(a, b, workspace=1 << 20)[0]["key_bytes"] != base
    assert plan_of(a.astype(np.float64), b.astype(np.float64), dtype=dc.float64.id)[0]["key_bytes"] != base
    mis = plan_of(a, b, addr_a=(1 << 20) + 4)[0]
    assert mis["key_bytes"] != base and mis["key"]["align_b"] == 4  # cuBLAS's B is our A
    assert plan_of(a.T.copy().T, b)[0]["key_bytes"] != base  # column-major A: read as T


def test_a_single_matrix_keys_no_batch_strides():
    a = rand(4, 16)
    one = np.lib.stride_tricks.as_strided(a, (1, 4, 16), (999 * 4, 64, 4))
    p, _ = plan_of(one, rand(1, 16, 8))
    q, _ = plan_of(a[None], rand(1, 16, 8))
    assert p["key"]["stride_a"] == p["key"]["stride_b"] == p["key"]["stride_c"] == 0
    assert p["key_bytes"] == q["key_bytes"]


def test_alignment_of_host_looped_output_steps():
    def q_of(T):
        return rand(2, T, 3, 3, 4)[:, :, 0].transpose(0, 2, 1, 3)

    p = check(q_of(5), rand(2, 3, 4, 3))  # outer steps of C: 3*5*3 floats = 180 bytes -> 4-aligned
    assert p["split"] == 1 and p["key"]["align_c"] == 4


def test_too_many_matrices_in_one_batch_is_refused():
    s = (1 << 16, 1 << 16, 1, 1)
    st = (1 << 16, 1, 1, 1)
    with pytest.raises(dc.UnsupportedError, match="2\\^31"):
        _C.matmul_plan(s, s, st, s, st)


def test_bad_planner_arguments():
    with pytest.raises(ValueError, match="inner dims"):
        _C.matmul_plan((4, 8), (4, 16), (16, 1), (15, 8), (8, 1))
    with pytest.raises(ValueError, match="float dtype"):
        _C.matmul_plan((4, 8), (4, 16), (16, 1), (16, 8), (8, 1), dtype=dc.int64.id)
    with pytest.raises(ValueError, match="lengths differ"):
        _C.matmul_plan((4, 8), (4, 16), (16,), (16, 8), (8, 1))


def random_operand(g, batch, r, c):
    """A (batch..., r, c) float32 view: contiguous, transposed, strided, broadcast or permuted."""
    kind = g.integers(0, 5)
    if kind == 1:  # transposed last two dims
        return np.swapaxes(g.standard_normal(batch + (c, r)).astype(np.float32), -1, -2)
    if kind == 2:  # every other column
        return g.standard_normal(batch + (r, 2 * c)).astype(np.float32)[..., ::2]
    if kind == 3 and batch:  # broadcast over the first batch dim
        x = g.standard_normal((1,) + batch[1:] + (r, c)).astype(np.float32)
        return np.broadcast_to(x, batch + (r, c))
    if kind == 4 and len(batch) >= 2:  # batch dims stored in the other order
        x = g.standard_normal((batch[1], batch[0]) + batch[2:] + (r, c)).astype(np.float32)
        return np.swapaxes(x, 0, 1)
    return g.standard_normal(batch + (r, c)).astype(np.float32)


@pytest.mark.parametrize("seed", range(40))
def test_random_views_plan_the_right_product(seed):
    g = np.random.default_rng(seed)
    nb = int(g.integers(0, 3))
    batch = tuple(int(v) for v in g.integers(1, 12 if nb == 1 else 5, nb))
    M, K, N = (int(v) for v in g.integers(1, 7, 3))
    check(random_operand(g, batch, M, K), random_operand(g, batch, K, N))
