"""Local (pixel-level) contrastive losses on decoder feature maps.

* :func:`supervised_local_contrastive_loss` - the supervised local loss of
  Hu et al., MICCAI 2021, with the ``stride``, ``block`` and ``full`` pooling
  strategies. Every mode is exact and memory-bounded: only anchor rows of the
  similarity matrix are computed, block by block, with a custom gradient
  accumulated in the same pass (see :func:`pooled_weighted_lse_sum`).
* :func:`self_supervised_local_contrastive_loss` - the 9/13-point local loss of
  Chaitanya et al., NeurIPS 2020, used as a baseline.

All arithmetic is float32 whatever the input dtype. Features are L2-normalised
over channels here, before (outside) the fused log-sum-exp op.

Definitions shared by the supervised modes. A *pool* is a set of points. In one
pool, with ``s`` the dot product of normalised features and ``t`` the
temperature:

* anchors: foreground points (label != 0) that have at least one positive;
* ``P(i)``: every other point of the pool with the same label as ``i``;
* ``A(i)``: every other point of the pool (background included);
* ``l_i = -(1/|P(i)|) sum_{p in P(i)} [s_ip/t - log sum_{k in A(i)} exp(s_ik/t)]``
  ``    = LSE_i - (1/|P(i)|) sum_{p in P(i)} s_ip / t``;
* pool loss: mean of ``l_i`` over the pool's anchors.

The positive term is computed from per-class feature sums
(``sum_p s_ip = f_i . (sum_{y_k = y_i} f_k) - f_i . f_i``), so only the
log-sum-exp needs rows of the similarity matrix, and rows are only computed for
anchors.

Like every loss of :mod:`tfsemiseg.losses`, these are pure functions of the
batch they are given: nothing is gathered across replicas here. Under a
distribution strategy the task gathers the global batch first (see
:func:`tfsemiseg.training.strategy.replica_gather`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import tensorflow as tf

from tfsemiseg.losses.global_contrastive import nt_xent_from_pairs

__all__ = [
    "supervised_local_contrastive_loss",
    "supervised_local_contrastive_loss_with_count",
    "self_supervised_local_contrastive_loss",
    "local_contrastive_points",
    "pooled_weighted_lse_sum",
]

# Block sizes (similarity entries) of pooled_weighted_lse_sum: a pool whose
# [anchors, points] block has at most FUSED_BLOCK_ELEMENTS entries (64 MB) is
# done in one block; larger pools stream keys in blocks of about
# STREAM_BLOCK_ELEMENTS entries (4 MB, cache-friendly), at least
# MIN_CHUNK_KEYS keys wide, for chunks of at most MAX_CHUNK_ROWS anchors.
# Peak extra memory is therefore O(max(FUSED_BLOCK_ELEMENTS,
# MAX_CHUNK_ROWS * MIN_CHUNK_KEYS)) plus O(N * C), never N^2.
FUSED_BLOCK_ELEMENTS = 1 << 24
STREAM_BLOCK_ELEMENTS = 1 << 20
MIN_CHUNK_KEYS = 128
MAX_CHUNK_ROWS = 8192

# Finite "minus infinity" for masked logits (exp underflows to exactly 0 while
# values and gradients stay finite, even for rows that are entirely masked).
_NEG = -1.0e9

_MODES = ("stride", "block", "full")


@tf.custom_gradient
def _unit_vectors(x: tf.Tensor):
    """L2 normalisation over the last axis with a lean gradient.

    Same values and gradient as ``tf.math.l2_normalize(x, -1)`` (epsilon
    1e-12 on the squared norm), in fewer full-size passes.
    """
    sq = tf.einsum("...c,...c->...", x, x)[..., None]
    r = tf.math.rsqrt(tf.maximum(sq, 1e-12))
    y = x * r

    def grad(dy: tf.Tensor) -> tf.Tensor:
        # d/dx [x r(x)] = r (dy - y <dy, y>) where the norm is not clamped.
        s = tf.where(sq > 1e-12, tf.einsum("...c,...c->...", dy, y)[..., None], 0.0)
        return (dy - y * s) * r

    return y, grad


def _subsample(x: tf.Tensor, stride: int) -> tf.Tensor:
    """``x[:, ::stride, ::stride]`` for [B, H, W, C] ``x``.

    When H and W are static multiples of ``stride`` the gradient is a single
    ``tf.pad`` (about twice as fast as the generic strided-slice gradient,
    which matters because the gradient is a full-size map).
    """
    h, w = x.shape[1], x.shape[2]
    if stride == 1:
        return x
    if h is None or w is None or h % stride or w % stride or x.shape[-1] is None:
        return x[:, ::stride, ::stride]

    @tf.custom_gradient
    def _sub(v: tf.Tensor):
        b, c = tf.shape(v)[0], v.shape[-1]
        cells = tf.reshape(v, tf.stack([b, h // stride, stride, w // stride, stride, c]))

        def grad(dy: tf.Tensor) -> tf.Tensor:
            pad = [[0, 0], [0, 0], [0, stride - 1], [0, 0], [0, stride - 1], [0, 0]]
            return tf.reshape(tf.pad(dy[:, :, None, :, None, :], pad), tf.shape(v))

        return cells[:, :, 0, :, 0, :], grad

    return _sub(x)


def _normalize(features: tf.Tensor) -> tf.Tensor:
    features = tf.convert_to_tensor(features)
    if features.dtype != tf.float32:
        features = tf.cast(features, tf.float32)
    return _unit_vectors(features)


# --------------------------------------------------------------------------
# Pooled, chunked log-sum-exp with a custom gradient (all modes)
#
# Notation of the helpers below: a block of r queries (rows) against n keys
# (columns) of one pool, C channels. ``q`` [r, C] holds x_{j_i} / t, ``q_w``
# [r, C] holds w_i x_{j_i} / t, and ``self_col`` [r] int32 is the column of
# each query's own key in the block's keys (excluded from its sum).
# --------------------------------------------------------------------------


class _Queries(NamedTuple):
    """The M queries of :func:`pooled_weighted_lse_sum`, sorted by pool.

    Attributes:
      scaled: [M, C] float32 ``x_{j_i} / t``.
      weighted: [M, C] float32 ``w_i x_{j_i} / t``.
      index: [M] int32 ``j_i``, the query's row in the keys.
      weights: [M] float32 ``w_i``.
      inv_t: ``1 / t``.
    """

    scaled: tf.Tensor
    weighted: tf.Tensor
    index: tf.Tensor
    weights: tf.Tensor
    inv_t: float


class _Blocks(NamedTuple):
    """How :func:`pooled_weighted_lse_sum` cuts a pool into blocks.

    Attributes:
      max_rows: at most this many queries per chunk (``MAX_CHUNK_ROWS`` or
        ``chunk_size``).
      fixed: ``chunk_size`` was given: keys are streamed ``max_rows`` at a
        time whenever a pool has more keys than that.
      no_shift: exponentials are taken without subtracting the row maximum.
    """

    max_rows: int
    fixed: bool
    no_shift: bool


def _self_entries(self_col: tf.Tensor, start: tf.Tensor | int, width: tf.Tensor) -> tf.Tensor:
    """[s, 2] int32 (row, column) of the excluded entries inside keys [start, start + width).

    ``self_col``: [r] int32 column of each row's own key among all the pool's keys.
    """
    hit = tf.cast(tf.where(tf.logical_and(self_col >= start, self_col < start + width))[:, 0], tf.int32)
    return tf.stack([hit, tf.gather(self_col, hit) - start], axis=1)


def _exp_block(q: tf.Tensor, k: tf.Tensor, self_pos: tf.Tensor, shift: tf.Tensor | None) -> tf.Tensor:
    """[r, n] ``exp(q k^T - shift)`` with the ``self_pos`` [s, 2] entries set to 0.

    ``q``: [r, C]; ``k``: [n, C]; ``shift``: [r] or None (no shift).
    """
    logits = tf.matmul(q, k, transpose_b=True)
    if shift is not None:
        logits = logits - shift[:, None]
    e = tf.exp(logits)
    return tf.tensor_scatter_nd_update(e, self_pos, tf.zeros(tf.shape(self_pos)[:1], tf.float32))


def _row_max(q: tf.Tensor, k: tf.Tensor, self_pos: tf.Tensor) -> tf.Tensor:
    """[r] maximum over k != self of ``q k^T`` (``q`` [r, C], ``k`` [n, C])."""
    logits = tf.matmul(q, k, transpose_b=True)
    logits = tf.tensor_scatter_nd_update(logits, self_pos, tf.fill(tf.shape(self_pos)[:1], _NEG))
    return tf.reduce_max(logits, axis=1)


def _key_chunk(keys: tf.Tensor, self_col: tf.Tensor, c: tf.Tensor, width: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Chunk ``c`` of ``width`` keys: ([<= width, C] keys, [s, 2] self entries in it)."""
    c0 = c * width
    return keys[c0 : tf.minimum(c0 + width, tf.shape(keys)[0])], _self_entries(self_col, c0, width)


def _block_array(size: tf.Tensor | int, like: tf.Tensor) -> tf.TensorArray:
    """A TensorArray of ``size`` float32 blocks [?, C] (C from ``like`` [n, C]), to concat."""
    elem = tf.TensorShape([None]).concatenate(like.shape[1:])
    return tf.TensorArray(tf.float32, size=size, element_shape=elem, infer_shape=False)


def _fused_rows(q, q_w, keys, self_col, no_shift: bool) -> tuple:
    """One block: r queries against all n keys of their pool.

    Args:
      q: [r, C] ``x_{j_i} / t``. q_w: [r, C] ``w_i x_{j_i} / t``.
      keys: [n, C] the pool's keys. self_col: [r] int32 columns of the queries' own keys.
      no_shift: skip the row maximum.

    Returns:
      ``(row_sum [r], shift [r] or None, dq [r, C], dk [n, C])`` with
      ``row_sum_i = sum_{k != self} exp(q_i . x_k - shift_i)``, ``p_ik`` the
      masked softmax of row i, ``dq_i = sum_k p_ik x_k`` and
      ``dk_k = sum_i p_ik w_i x_{j_i} / t``.
    """
    self_pos = _self_entries(self_col, 0, tf.shape(keys)[0])
    shift = None if no_shift else _row_max(q, keys, self_pos)
    e = _exp_block(q, keys, self_pos, shift)
    row_sum = tf.reduce_sum(e, axis=1)
    inv_sum = tf.math.divide_no_nan(1.0, row_sum)[:, None]
    dk = tf.matmul(e, q_w * inv_sum, transpose_a=True)  # [n, C]
    dq = tf.matmul(e, keys) * inv_sum  # [r, C]: sum_k p_ik x_k
    return row_sum, shift, dq, dk


def _streamed_row_sums(q, keys, self_col, width, no_shift: bool) -> tuple:
    """First pass of :func:`_streamed_rows`: ``(row_sum [r], shift [r] or None)``.

    Keys [n, C] are read ``width`` at a time; with a shift, a streaming
    log-sum-exp keeps a running row maximum (``shift``) and rescales the sums.
    """
    num_chunks = (tf.shape(keys)[0] + width - 1) // width
    r = tf.shape(q)[0]
    if no_shift:

        def add_chunk(c, row_sum):
            k_c, self_pos = _key_chunk(keys, self_col, c, width)
            return c + 1, row_sum + tf.reduce_sum(_exp_block(q, k_c, self_pos, None), axis=1)

        _, row_sum = tf.while_loop(lambda c, _: c < num_chunks, add_chunk, (0, tf.zeros([r])), parallel_iterations=1)
        return row_sum, None

    def add_shifted_chunk(c, run_max, row_sum):
        k_c, self_pos = _key_chunk(keys, self_col, c, width)
        new_max = tf.maximum(run_max, _row_max(q, k_c, self_pos))
        e = _exp_block(q, k_c, self_pos, new_max)
        return c + 1, new_max, row_sum * tf.exp(run_max - new_max) + tf.reduce_sum(e, axis=1)

    _, shift, row_sum = tf.while_loop(
        lambda c, *_: c < num_chunks,
        add_shifted_chunk,
        (0, tf.fill([r], tf.constant(_NEG, tf.float32)), tf.zeros([r])),
        parallel_iterations=1,
    )
    return row_sum, shift


def _streamed_rows(q, q_w, keys, self_col, width, no_shift: bool) -> tuple:
    """:func:`_fused_rows` with the keys streamed in chunks of ``width``.

    Same arguments (plus ``width``, a scalar int32) and results. Two passes
    over the key chunks: the row sums (:func:`_streamed_row_sums`), then
    each block is recomputed for ``dq`` and ``dk``, so no block is kept.
    """
    row_sum, shift = _streamed_row_sums(q, keys, self_col, width, no_shift)
    num_chunks = (tf.shape(keys)[0] + width - 1) // width
    channels = keys.shape[-1] if keys.shape[-1] is not None else tf.shape(keys)[-1]
    inv_sum = tf.math.divide_no_nan(1.0, row_sum)[:, None]
    q_w = q_w * inv_sum

    def add_chunk(c, dq, dk_chunks):
        k_c, self_pos = _key_chunk(keys, self_col, c, width)
        e = _exp_block(q, k_c, self_pos, shift)
        return c + 1, dq + tf.matmul(e, k_c), dk_chunks.write(c, tf.matmul(e, q_w, transpose_a=True))

    _, dq, dk_chunks = tf.while_loop(
        lambda c, *_: c < num_chunks,
        add_chunk,
        (0, tf.zeros(tf.stack([tf.shape(q)[0], channels])), _block_array(num_chunks, keys)),
        parallel_iterations=1,
    )
    return row_sum, shift, dq * inv_sum, dk_chunks.concat()


def _with_shift(out: tuple, rows: tf.Tensor) -> tuple:
    """Replaces a None shift by zeros so that both tf.cond branches match."""
    row_sum, shift, dq, dk = out
    return row_sum, tf.zeros([rows]) if shift is None else shift, dq, dk


def _pool_lse_sum(total, keys, first_key, qs, qe, queries: _Queries, blocks: _Blocks) -> tuple:
    """Adds one pool's ``w_i LSE_i`` to ``total``, in chunks of its queries.

    Per chunk of at most ``blocks.max_rows`` queries: if the [queries, keys]
    block has at most ``FUSED_BLOCK_ELEMENTS`` entries (the usual case of
    ``stride`` and ``block`` modes) it is computed once
    (:func:`_fused_rows`: three matmuls and one ``exp``); otherwise (``full``
    mode) the keys are streamed in chunks of about ``STREAM_BLOCK_ELEMENTS /
    queries``, at least ``MIN_CHUNK_KEYS`` (:func:`_streamed_rows`: four
    matmuls and two ``exp``).

    Args:
      total: scalar float32 running sum. keys: [n, C] the pool's keys, which
        start at row ``first_key`` of all keys. qs, qe: the pool's queries
        are ``queries[qs:qe]``.

    Returns:
      ``(total, dk)``: the new sum and [n, C] its gradient w.r.t. ``keys``.
    """
    n = tf.shape(keys)[0]
    rows = tf.minimum(tf.maximum(qe - qs, 1), blocks.max_rows)
    if blocks.fixed:
        fused = n <= blocks.max_rows
        width = tf.constant(blocks.max_rows)
    else:
        fused = rows * n <= FUSED_BLOCK_ELEMENTS
        width = tf.clip_by_value(STREAM_BLOCK_ELEMENTS // rows, MIN_CHUNK_KEYS, tf.maximum(n, 1))
    channels = keys.shape[-1] if keys.shape[-1] is not None else tf.shape(keys)[-1]

    def add_chunk(a, total, dk):
        b = tf.minimum(a + rows, qe)
        q, q_w, w = queries.scaled[a:b], queries.weighted[a:b], queries.weights[a:b]
        self_col = queries.index[a:b] - first_key
        row_sum, shift, dq, dk_r = tf.cond(
            fused,
            lambda: _with_shift(_fused_rows(q, q_w, keys, self_col, blocks.no_shift), b - a),
            lambda: _with_shift(_streamed_rows(q, q_w, keys, self_col, width, blocks.no_shift), b - a),
        )
        total = total + tf.reduce_sum(w * (tf.math.log(row_sum) + shift))
        # Query side: add (w_i / t) sum_k p_ik x_k at the query's own row.
        dq = dq * (w * queries.inv_t)[:, None]
        return b, total, dk + tf.tensor_scatter_nd_add(dk_r, self_col[:, None], dq)

    _, total, dk = tf.while_loop(
        lambda a, *_: a < qe, add_chunk, (qs, total, tf.zeros(tf.stack([n, channels]))), parallel_iterations=1
    )
    return total, dk


def _lse_sum_and_gradient(x, query_index, weights, q_offsets, k_offsets, inv_t: float, blocks: _Blocks) -> tuple:
    """The value of :func:`pooled_weighted_lse_sum` and its gradient, pool by pool.

    Args:
      x: [N, C] float32 keys (no tape records anything here).
      query_index: [M] int32 ``j``. weights: [M] float32 ``w``.
      q_offsets, k_offsets: [T+1] int32 pool boundaries.
      inv_t: ``1 / t``. blocks: the block sizes.

    Returns:
      ``(total, dx)``: scalar float32 and [N, C] float32.
    """
    q = tf.gather(x, query_index)  # [M, C]
    queries = _Queries(q * inv_t, q * (weights * inv_t)[:, None], query_index, weights, inv_t)

    def add_pool(p, total, dx_pools):
        ks, ke = k_offsets[p], k_offsets[p + 1]
        total, dk = _pool_lse_sum(total, x[ks:ke], ks, q_offsets[p], q_offsets[p + 1], queries, blocks)
        return p + 1, total, dx_pools.write(p, dk)

    num_pools = tf.size(q_offsets) - 1
    _, total, dx_pools = tf.while_loop(
        lambda p, *_: p < num_pools,
        add_pool,
        (tf.constant(0), tf.constant(0.0), _block_array(num_pools, x)),
        parallel_iterations=1,
    )
    return total, dx_pools.concat()  # pools in key order: [N, C]


def _with_accumulated_gradient(x: tf.Tensor, forward: Callable) -> tf.Tensor:
    """``value`` of ``forward(x) = (value, dvalue/dx)``, differentiable w.r.t. ``x``.

    ``forward`` gets ``x`` without a tape and returns the scalar value and
    its gradient (same shape as ``x``): the backward pass only scales that
    stored gradient by the upstream one.
    """

    @tf.custom_gradient
    def value(x: tf.Tensor):
        out, dx = forward(tf.stop_gradient(x))
        return out, lambda dy: dx * dy

    return value(x)


def pooled_weighted_lse_sum(
    keys: tf.Tensor, query_index: tf.Tensor, weights: tf.Tensor, q_offsets: tf.Tensor, k_offsets: tf.Tensor,
    temperature: float, chunk_size: int | None = None, logit_bound: float | None = None,
) -> tf.Tensor:
    """``sum_i w_i log sum_{k in pool(i), k != j_i} exp(x_{j_i} . x_k / t)``.

    The queries are rows of the keys: query ``i`` is ``x[j_i]`` with
    ``j = query_index``, and its own row is excluded from its sum. Keys and
    queries are sorted by pool: pool ``p`` owns the keys
    ``x[k_offsets[p]:k_offsets[p+1]]`` and the queries
    ``query_index[q_offsets[p]:q_offsets[p+1]]`` (which must point into the
    pool's keys).

    Exact, and memory-bounded: the similarity matrix is never held beyond one
    block of [chunk of a pool's queries, chunk of the pool's keys] (see
    :func:`_pool_lse_sum` for the block sizes). With ``p_ik`` the masked
    softmax of row ``i``, the gradient is::

        dx_{j_i} += (w_i / t) sum_k p_ik x_k      dx_k += sum_i (w_i / t) p_ik x_{j_i}

    Because the output is a fixed weighted sum, the gradient is accumulated
    in the forward pass and the backward pass only scales the stored [N, C]
    buffer: nothing N x N is stored, and no similarity is recomputed in
    the backward pass. The loops are ``tf.while_loop`` s, so the function
    works in eager mode and inside ``tf.function`` with dynamic sizes,
    including no query at all. (The value alone costs as much as value +
    gradient.)

    Args:
      keys: [N, C] float32 ``x``.
      query_index: [M] int32 ``j``, sorted by pool.
      weights: [M] float32 ``w_i`` (treated as constants: no gradient).
      q_offsets, k_offsets: [T+1] int32 pool boundaries (0 first, M / N last).
      temperature: ``t``.
      chunk_size: if set, at most this many queries per chunk and keys per
        key chunk, and the streaming path is used whenever a pool has more
        keys (tests use it to force several ragged chunks).
      logit_bound: a bound of every ``|logit|`` (``1/t`` for unit vectors).
        If it is at most 40 the exponentials are taken without any shift
        (no overflow or underflow is possible); otherwise, or with ``None``,
        rows are shifted by their (running) maximum, which costs one more
        matmul per block.

    Returns:
      Scalar float32.
    """
    query_index = tf.cast(query_index, tf.int32)
    weights = tf.stop_gradient(tf.cast(weights, tf.float32))
    offsets = tf.cast(q_offsets, tf.int32), tf.cast(k_offsets, tf.int32)
    blocks = _Blocks(
        max_rows=MAX_CHUNK_ROWS if chunk_size is None else max(int(chunk_size), 1),
        fixed=chunk_size is not None,
        # |logit| <= 40: exp(logit) in [4e-18, 2e17], so rows of up to 1e20
        # terms are summed in float32 without any shift.
        no_shift=logit_bound is not None and logit_bound <= 40.0,
    )
    return _with_accumulated_gradient(
        keys, lambda x: _lse_sum_and_gradient(x, query_index, weights, *offsets, 1.0 / temperature, blocks)
    )


def _tile_points(
    x: tf.Tensor, y: tf.Tensor, block_size: int
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Cuts maps into ``block_size`` tiles; one pool per tile position.

    Tiles start at multiples of ``block_size`` from the top-left; when H or W
    is not a multiple, the last row/column of tiles is smaller (the bottom /
    right remainder), so every pixel belongs to exactly one tile.

    Args:
      x: [B, H, W, C] features. y: [B, H, W] labels.

    Returns:
      x: [N, C] and y: [N] (N = B*H*W) sorted by tile position (row-major over
      tile positions, then map, then pixel in the tile); pool: [N] int32 tile
      index; num_pools: ceil(H/bs) * ceil(W/bs).
    """
    bs = block_size
    static_hw = x.shape[1:3]
    dyn = tf.shape(x)
    b, h, w = dyn[0], dyn[1], dyn[2]
    channels = x.shape[-1] if x.shape[-1] is not None else dyn[3]
    nh = (h + bs - 1) // bs
    nw = (w + bs - 1) // bs
    exact = None not in static_hw and static_hw[0] % bs == 0 and static_hw[1] % bs == 0
    valid = None
    if not exact:  # zero-pad to whole tiles, then drop the padding again
        pads = [[0, 0], [0, nh * bs - h], [0, nw * bs - w]]
        valid = tf.pad(tf.ones([b, h, w], tf.int32), pads) > 0
        x = tf.pad(x, pads + [[0, 0]])
        y = tf.pad(y, pads)

    def to_pools(t: tf.Tensor, depth: list) -> tf.Tensor:
        t = tf.reshape(t, tf.stack([b, nh, bs, nw, bs] + depth))
        t = tf.transpose(t, [1, 3, 0, 2, 4] + ([5] if depth else []))
        return tf.reshape(t, tf.stack([nh * nw * b * bs * bs] + depth))

    x = to_pools(x, [channels])
    y = to_pools(y, [])
    pool = tf.repeat(tf.range(nh * nw), b * bs * bs)
    if valid is not None:
        keep = to_pools(valid, [])
        x, y, pool = tf.boolean_mask(x, keep), tf.boolean_mask(y, keep), tf.boolean_mask(pool, keep)
    return x, y, pool, nh * nw


def _pooled_loss(
    x: tf.Tensor,
    y: tf.Tensor,
    pool: tf.Tensor,
    num_pools: tf.Tensor | int,
    temperature: float,
    chunk_size: int | None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Mean over pools with anchors of the pools' mean anchor loss.

    With ``w_i = 1 / (|anchors of i's pool| * |pools with anchors|)``::

        loss = sum_i w_i l_i = sum_i w_i LSE_i - sum_i w_i (1/|P(i)|) sum_{p in P(i)} s_ip / t

    The first sum is :func:`pooled_weighted_lse_sum`; the second comes from
    per-(pool, class) feature sums.

    Args:
      x: [N, C] L2-normalised float32 features, sorted by pool.
      y: [N] int32 labels. pool: [N] int32 pool index (non-decreasing).
      num_pools: T. temperature: ``t``. chunk_size: see pooled_weighted_lse_sum.

    Returns:
      (loss, num_anchors): scalar float32 (0 without anchors) and int32.
    """
    inv_t = 1.0 / temperature
    # Per-(pool, class) point counts; P(i) = the other points of i's (pool, class).
    uniq, uidx = tf.unique(y)
    num_seg = num_pools * tf.size(uniq)
    seg = pool * tf.size(uniq) + uidx  # [N]
    counts = tf.math.unsorted_segment_sum(tf.ones_like(y, tf.float32), seg, num_seg)
    is_anchor = tf.logical_and(y != 0, tf.gather(counts, seg) >= 2.0)
    anchor_idx = tf.cast(tf.where(is_anchor)[:, 0], tf.int32)  # [M], sorted: grouped by pool
    anchor_pool = tf.gather(pool, anchor_idx)
    m_p = tf.math.unsorted_segment_sum(tf.ones_like(anchor_idx), anchor_pool, num_pools)  # [T]
    n_p = tf.math.unsorted_segment_sum(tf.ones_like(pool), pool, num_pools)
    q_off = tf.concat([[0], tf.cumsum(m_p)], 0)
    k_off = tf.concat([[0], tf.cumsum(n_p)], 0)
    # Loss = mean over used pools of the mean over their anchors: weight per anchor.
    used = tf.reduce_sum(tf.cast(m_p > 0, tf.float32))
    w = tf.math.divide_no_nan(1.0, tf.gather(tf.cast(m_p, tf.float32), anchor_pool) * used)  # [M]

    q = tf.gather(x, anchor_idx)  # [M, C]
    # Unit vectors: |logit| <= 1/t.
    weighted_lse = pooled_weighted_lse_sum(
        x, anchor_idx, w, q_off, k_off, temperature, chunk_size, logit_bound=inv_t * (1.0 + 1e-6)
    )

    # Positive term: sum_p s_ip = q_i . (sum of i's class in the pool) - q_i . q_i.
    # Every member of a class with >= 2 members is an anchor, so sum over anchors.
    seg_q = tf.gather(seg, anchor_idx)
    class_sum = tf.gather(tf.math.unsorted_segment_sum(q, seg_q, num_seg), seg_q)  # [M, C]
    num_pos = tf.maximum(tf.gather(counts, seg_q) - 1.0, 1.0)
    mean_pos = (tf.reduce_sum(q * class_sum, -1) - tf.reduce_sum(q * q, -1)) * inv_t / num_pos  # [M]
    return weighted_lse - tf.reduce_sum(w * mean_pos), tf.size(anchor_idx)


# --------------------------------------------------------------------------
# Public supervised loss
# --------------------------------------------------------------------------


def _pool_points(
    features: tf.Tensor, labels: tf.Tensor, mode: str, stride: int, block_size: int
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor | int]:
    """The points of every pool of ``mode``, normalised and sorted by pool.

    Args:
      features: [B, H, W, C] any float dtype. labels: [B, H, W] integer.
      mode, stride, block_size: see :func:`supervised_local_contrastive_loss_with_count`.

    Returns:
      x: [N, C] L2-normalised float32, y: [N] int32 labels, pool: [N] int32
      pool index (non-decreasing), num_pools T.
    """
    features = tf.convert_to_tensor(features)
    if features.shape.rank is not None and features.shape.rank != 4:
        raise ValueError(f"features must be [B, H, W, C], got shape {features.shape}")
    labels = tf.cast(labels, tf.int32)  # [B, H, W]
    if mode == "stride":
        if int(stride) < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        # Subsample first: only the selected points are normalised.
        features = _subsample(features, int(stride))
        labels = labels[:, :: int(stride), :: int(stride)]
    x = _normalize(features)  # [B, H', W', C]
    channels = x.shape[-1] if x.shape[-1] is not None else tf.shape(x)[-1]
    if mode == "block":
        if int(block_size) < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        return _tile_points(x, labels, int(block_size))
    # one pool of every (selected) point
    y = tf.reshape(labels, [-1])
    return tf.reshape(x, tf.stack([-1, channels])), y, tf.zeros_like(y), 1


def supervised_local_contrastive_loss_with_count(
    features: tf.Tensor, labels: tf.Tensor, temperature: float = 0.1, mode: str = "stride", stride: int = 4,
    block_size: int = 16, *, chunk_size: int | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Supervised local (pixel) contrastive loss of Hu et al. (2021) and its number of anchors.

    Args:
      features: [B, H, W, C] decoder features (``h2`` output), any float
        dtype; cast to float32 and L2-normalised over C. ``B`` counts every
        augmented view (both views of each image).
      labels: [B, H, W] integer labels, 0 = background.
      temperature: ``t``.
      mode: how points are pooled (see the module docstring for the loss of
        one pool):

        * ``"stride"``: one pool of ``features[:, ::stride, ::stride]`` (the
          top-left point of each ``stride x stride`` cell, including partial
          cells at the bottom/right) of all ``B`` maps together.
        * ``"block"``: tiles of ``block_size x block_size`` starting at the
          top-left; for each tile position one pool made of that tile in all
          ``B`` maps. When H or W is not a multiple of ``block_size`` the
          remainder rows/columns at the bottom/right form smaller edge tiles
          (every pixel belongs to exactly one tile). Tile positions without an
          anchor are skipped; the loss is the mean of the other pools' losses.
        * ``"full"``: one pool of every pixel of every map (stride 1).

        All modes are exact and never materialise more than one block of the
        similarity matrix (memory O(chunk x N), not N^2; see
        :func:`pooled_weighted_lse_sum`).
      stride: subsampling step of ``"stride"`` mode.
      block_size: tile size of ``"block"`` mode.
      chunk_size: ``None`` (default): automatic block sizes (see
        :func:`pooled_weighted_lse_sum`); an int caps both the anchors and
        the keys per block (mainly for tests).

    Returns:
      ``(loss, num_anchors)``: a scalar float32 and a scalar int32 (total
      anchors over all pools). ``num_anchors == 0`` means there was nothing to
      contrast: the loss is then exactly 0 with a zero (never NaN) gradient,
      and a training step may skip its update.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    x, y, pool, num_pools = _pool_points(features, labels, mode, stride, block_size)
    return _pooled_loss(x, y, pool, num_pools, temperature, chunk_size)


def supervised_local_contrastive_loss(
    features: tf.Tensor, labels: tf.Tensor, temperature: float = 0.1, mode: str = "stride", stride: int = 4,
    block_size: int = 16, *, chunk_size: int | None = None,
) -> tf.Tensor:
    """Supervised local (pixel) contrastive loss of Hu et al. (2021).

    The arguments of :func:`supervised_local_contrastive_loss_with_count`; returns its
    scalar float32 loss alone: 0 (with a zero gradient) when there is no anchor.
    """
    loss, _ = supervised_local_contrastive_loss_with_count(
        features, labels, temperature, mode, stride, block_size, chunk_size=chunk_size
    )
    return loss


# --------------------------------------------------------------------------
# Self-supervised local loss (Chaitanya et al. 2020 baseline)
# --------------------------------------------------------------------------


def local_contrastive_points(
    height: int, width: int, positions: int = 13, margin: int | tuple[int, int] | None = None
) -> list[tuple[int, int]]:
    """(row, col) of the 9 or 13 points of the self-supervised local loss.

    With margins ``mh, mw`` (default ``height // 8``, ``width // 8``) the
    inset rows are ``r0 = mh``, ``r1 = (height - 1) // 2``,
    ``r2 = height - 1 - mh`` (columns ``c0, c1, c2`` likewise).

    * 9 points: all ``(r_a, c_b)``, a, b in {0, 1, 2}: the 4 corners, 4 edge
      midpoints and the centre of the inset rectangle.
    * 13 points: those 9 followed by the 4 quarter points ``(qr_a, qc_b)``,
      a, b in {0, 1}, with ``qr0 = (r0 + r1) // 2``, ``qr1 = (r1 + r2) // 2``
      (``qc0, qc1`` likewise), i.e. the centres of the 4 quadrants.

    Order: row-major over the 3 x 3 grid, then row-major over the quarter
    points.

    Raises:
      ValueError: if ``positions`` is not 9 or 13, or the map is too small for
        the points to be distinct.
    """
    if positions not in (9, 13):
        raise ValueError(f"positions must be 9 or 13, got {positions}")
    if margin is None:
        mh, mw = height // 8, width // 8
    elif isinstance(margin, int):
        mh = mw = margin
    else:
        mh, mw = margin

    def axis(size: int, m: int) -> tuple[list[int], list[int]]:
        r0, r1, r2 = m, (size - 1) // 2, size - 1 - m
        return [r0, r1, r2], [(r0 + r1) // 2, (r1 + r2) // 2]

    rows, qrows = axis(height, mh)
    cols, qcols = axis(width, mw)
    points = [(r, c) for r in rows for c in cols]
    if positions == 13:
        points += [(r, c) for r in qrows for c in qcols]
    if len(set(points)) != positions or min(min(p) for p in points) < 0 or any(
        r >= height or c >= width for r, c in points
    ):
        raise ValueError(
            f"a {height}x{width} map with margin ({mh}, {mw}) is too small for "
            f"{positions} distinct points: {points}"
        )
    return points


def self_supervised_local_contrastive_loss(
    f_a: tf.Tensor,
    f_b: tf.Tensor,
    temperature: float = 0.1,
    positions: int = 13,
    *,
    margin: int | tuple[int, int] | None = None,
) -> tf.Tensor:
    """Self-supervised local contrastive loss (Chaitanya et al. 2020).

    A fixed set of points (see :func:`local_contrastive_points`; default
    margin ``H // 8``, ``W // 8``) is taken from every map. The positive of a
    point is the same point of the same image in the other view; the
    denominator of an anchor runs over every other selected point of all maps
    of both views (``2 * B * positions - 1`` terms, positive included, as in
    NT-Xent). The loss is the mean over all ``2 * B * positions`` anchors.

    Args:
      f_a: [B, H, W, C] decoder features of the first view (static H, W).
      f_b: [B, H, W, C] features of the second view of the same images.
      temperature: ``t``.
      positions: 9 or 13.
      margin: inset of the outer points; int, (mh, mw) or None (H//8, W//8).

    Returns:
      Scalar float32.
    """
    f_a = _normalize(f_a)
    f_b = _normalize(f_b)
    height, width = f_a.shape[1], f_a.shape[2]
    if height is None or width is None:
        raise ValueError("self_supervised_local_contrastive_loss needs static H and W")
    points = tf.constant(local_contrastive_points(height, width, positions, margin), tf.int32)
    channels = f_a.shape[-1] if f_a.shape[-1] is not None else tf.shape(f_a)[-1]

    def select(f: tf.Tensor) -> tf.Tensor:
        p = tf.gather_nd(tf.transpose(f, [1, 2, 0, 3]), points)  # [P, B, C]
        return tf.reshape(tf.transpose(p, [1, 0, 2]), [-1, channels])  # [B*P, C]

    return nt_xent_from_pairs(select(f_a), select(f_b), temperature)
