"""Local (pixel-level) contrastive losses on decoder feature maps.

* :func:`supervised_local_contrastive_loss` - the supervised local loss of
  Hu et al., MICCAI 2021, with the ``stride``, ``block`` and ``full`` pooling
  strategies. Every mode is exact and memory-bounded: only anchor rows are
  computed, one [chunk of anchors, keys of the pool] block at a time, with a
  custom gradient (see :func:`pooled_weighted_lse_sum`).
* :func:`self_supervised_local_contrastive_loss` - the 9/13-point local loss of
  Chaitanya et al., NeurIPS 2020, used as a baseline.

All arithmetic is float32 whatever the input dtype. Features are L2-normalised
over channels here (outside the custom gradient: autodiff handles it).

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

Under a distribution strategy these losses are purely local (no cross-replica
gather): each replica returns the loss of its own maps.
"""

from __future__ import annotations

import tensorflow as tf

from tfsemiseg.losses.global_contrastive import nt_xent_from_pairs

__all__ = [
    "DEFAULT_CHUNK_ELEMENTS",
    "MIN_CHUNK_ROWS",
    "supervised_local_contrastive_loss",
    "supervised_local_contrastive_loss_with_count",
    "self_supervised_local_contrastive_loss",
    "local_contrastive_points",
    "pooled_weighted_lse_sum",
]

# Work is cut into blocks of [chunk of a pool's anchors, all keys of the pool]
# holding about DEFAULT_CHUNK_ELEMENTS similarities (16 MB in float32) but at
# least MIN_CHUNK_ROWS anchors: peak extra memory is a few blocks, i.e.
# O(max(DEFAULT_CHUNK_ELEMENTS, MIN_CHUNK_ROWS * N)) for N points, never N^2.
DEFAULT_CHUNK_ELEMENTS = 1 << 22
MIN_CHUNK_ROWS = 16

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


def _normalize(features: tf.Tensor) -> tf.Tensor:
    features = tf.convert_to_tensor(features)
    if features.dtype != tf.float32:
        features = tf.cast(features, tf.float32)
    return _unit_vectors(features)


# --------------------------------------------------------------------------
# Pooled, chunked log-sum-exp with a custom gradient (all modes)
# --------------------------------------------------------------------------


def pooled_weighted_lse_sum(
    keys: tf.Tensor,
    query_index: tf.Tensor,
    weights: tf.Tensor,
    q_offsets: tf.Tensor,
    k_offsets: tf.Tensor,
    temperature: float,
    chunk_size: int | None = None,
    logit_bound: float | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> tf.Tensor:
    """``sum_i w_i log sum_{k in pool(i), k != j_i} exp(x_{j_i} . x_k / t)``.

    The queries are rows of the keys: query ``i`` is ``x[j_i]`` with
    ``j = query_index``, and its own row is excluded from its sum. Keys and
    queries are sorted by pool: pool ``p`` owns the keys
    ``x[k_offsets[p]:k_offsets[p+1]]`` and the queries
    ``query_index[q_offsets[p]:q_offsets[p+1]]`` (which must point into the
    pool's keys).

    Exact, without ever holding more than one [chunk of a pool's queries,
    keys of the pool] block of similarities: a ``tf.while_loop`` over pools
    and, inside, over chunks of the pool's queries computes each block once.
    Because the output is a fixed weighted sum, the block's gradient
    contribution is accumulated in the same pass (``p_ik`` the masked
    softmax of row ``i``; the query part is added at row ``j_i``)::

        dx_{j_i} += (w_i / t) sum_k p_ik x_k      dx_k += sum_i (w_i / t) p_ik x_{j_i}

    and the backward pass only scales this [N, C] buffer by the incoming
    gradient: no similarity is stored or recomputed, and a block costs three
    matmuls and one ``exp`` pass. (Evaluating the value alone costs the
    same.) Works in eager mode and in ``tf.function`` with dynamic sizes,
    including no query at all.

    Args:
      keys: [N, C] float32 ``x``.
      query_index: [M] int32 ``j``, sorted by pool.
      weights: [M] float32 ``w_i`` (treated as constants: no gradient).
      q_offsets, k_offsets: [T+1] int32 pool boundaries (0 first, M / N last).
      temperature: ``t``.
      chunk_size: queries per block; ``None``: per pool,
        ``clip(chunk_elements // keys_in_pool, MIN_CHUNK_ROWS, queries)``.
      logit_bound: a bound of every ``|logit|`` (``1/t`` for unit vectors).
        If it is at most 40 the exponentials are taken without any shift
        (no overflow or underflow is possible); otherwise, or with ``None``,
        each row's maximum is subtracted first (one more pass per block).

    Returns:
      Scalar float32.
    """
    inv_t = 1.0 / temperature
    query_index = tf.cast(query_index, tf.int32)
    weights = tf.stop_gradient(tf.cast(weights, tf.float32))
    q_offsets = tf.cast(q_offsets, tf.int32)
    k_offsets = tf.cast(k_offsets, tf.int32)
    num_pools = tf.size(q_offsets) - 1
    channels = keys.shape[-1] if keys.shape[-1] is not None else tf.shape(keys)[-1]
    # |logit| <= 40: exp(logit) in [4e-18, 2e17], so rows of up to 1e20 terms
    # are summed in float32 without any shift.
    no_shift = logit_bound is not None and logit_bound <= 40.0

    @tf.custom_gradient
    def _fused(k: tf.Tensor):
        k_sg = tf.stop_gradient(k)  # nothing of the loops is recorded on a tape
        q_sg = tf.gather(k_sg, query_index)  # [M, C]
        q_in = q_sg * inv_t
        q_w = q_sg * (weights * inv_t)[:, None]  # w_i q_i / t

        def pool_body(p, total, dk_out):
            qs, qe = q_offsets[p], q_offsets[p + 1]
            ks, ke = k_offsets[p], k_offsets[p + 1]
            if chunk_size is None:
                rows = tf.clip_by_value(
                    chunk_elements // tf.maximum(ke - ks, 1), MIN_CHUNK_ROWS, tf.maximum(qe - qs, 1)
                )
            else:
                rows = max(int(chunk_size), 1)
            k_p = k_sg[ks:ke]  # [n_p, C]

            def chunk_body(a, total, dk_p):
                b = tf.minimum(a + rows, qe)
                self_c = query_index[a:b] - ks  # own column in the pool
                self_pos = tf.stack([tf.range(b - a), self_c], axis=1)
                logits = tf.matmul(q_in[a:b], k_p, transpose_b=True)  # [r, n_p]
                if no_shift:
                    e = tf.exp(logits)
                    shift = 0.0
                else:
                    logits = tf.tensor_scatter_nd_update(logits, self_pos, tf.fill([b - a], _NEG))
                    shift = tf.reduce_max(logits, axis=1, keepdims=True)
                    e = tf.exp(logits - shift)
                    shift = shift[:, 0]
                e = tf.tensor_scatter_nd_update(e, self_pos, tf.zeros([b - a], tf.float32))
                row_sum = tf.reduce_sum(e, axis=1)  # [r], > 0 for anchors
                total = total + tf.reduce_sum(weights[a:b] * (tf.math.log(row_sum) + shift))
                inv_sum = tf.math.divide_no_nan(1.0, row_sum)[:, None]
                dk_p = dk_p + tf.matmul(e, q_w[a:b] * inv_sum, transpose_a=True)  # key side
                dq = tf.matmul(e, k_p) * (inv_sum * weights[a:b, None] * inv_t)  # query side
                return b, total, tf.tensor_scatter_nd_add(dk_p, self_c[:, None], dq)

            _, total, dk_p = tf.while_loop(
                lambda a, *_: a < qe,
                chunk_body,
                (qs, total, tf.zeros(tf.stack([ke - ks, channels]), tf.float32)),
                parallel_iterations=1,
            )
            return p + 1, total, dk_out.write(p, dk_p)

        dk_out = tf.TensorArray(
            tf.float32,
            size=num_pools,
            element_shape=tf.TensorShape([None]).concatenate(keys.shape[1:]),
            infer_shape=False,
        )
        _, total, dk_out = tf.while_loop(
            lambda p, *_: p < num_pools,
            pool_body,
            (tf.constant(0), tf.constant(0.0), dk_out),
            parallel_iterations=1,
        )
        dk = dk_out.concat()  # pools in key order: [N, C]

        def grad(dy: tf.Tensor) -> tf.Tensor:
            return dk * dy

        return total, grad

    return _fused(keys)


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
    lse_sum = pooled_weighted_lse_sum(
        x, anchor_idx, w, q_off, k_off, temperature, chunk_size, logit_bound=inv_t * (1.0 + 1e-6)
    )

    # Positive term: sum_p s_ip = q_i . (sum of i's class in the pool) - q_i . q_i.
    # Every member of a class with >= 2 members is an anchor, so sum over anchors.
    seg_q = tf.gather(seg, anchor_idx)
    class_sum = tf.gather(tf.math.unsorted_segment_sum(q, seg_q, num_seg), seg_q)  # [M, C]
    num_pos = tf.maximum(tf.gather(counts, seg_q) - 1.0, 1.0)
    pos = (tf.reduce_sum(q * class_sum, -1) - tf.reduce_sum(q * q, -1)) * inv_t / num_pos
    return lse_sum - tf.reduce_sum(w * pos), tf.size(anchor_idx)


# --------------------------------------------------------------------------
# Public supervised loss
# --------------------------------------------------------------------------


def supervised_local_contrastive_loss_with_count(
    features: tf.Tensor,
    labels: tf.Tensor,
    temperature: float = 0.1,
    mode: str = "stride",
    stride: int = 4,
    block_size: int = 16,
    *,
    chunk_size: int | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Supervised local contrastive loss and its number of anchors.

    See :func:`supervised_local_contrastive_loss`. Returns ``(loss,
    num_anchors)``: a scalar float32 and a scalar int32 (total anchors over
    all pools). ``num_anchors == 0`` means there was nothing to contrast: the
    loss is then exactly 0 with a zero (never NaN) gradient, and a training
    step may skip its update.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    features = tf.convert_to_tensor(features)
    if features.shape.rank is not None and features.shape.rank != 4:
        raise ValueError(f"features must be [B, H, W, C], got shape {features.shape}")
    labels = tf.cast(labels, tf.int32)  # [B, H, W]
    if mode == "stride":
        if int(stride) < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        # Subsample first: only the selected points are normalised.
        features = features[:, :: int(stride), :: int(stride), :]
        labels = labels[:, :: int(stride), :: int(stride)]
    x = _normalize(features)  # [B, H', W', C]
    channels = x.shape[-1] if x.shape[-1] is not None else tf.shape(x)[-1]
    if mode == "block":
        if int(block_size) < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        x, y, pool, num_pools = _tile_points(x, labels, int(block_size))
    else:  # one pool of every (selected) point
        x = tf.reshape(x, tf.stack([-1, channels]))
        y = tf.reshape(labels, [-1])
        pool, num_pools = tf.zeros_like(y), 1
    return _pooled_loss(x, y, pool, num_pools, temperature, chunk_size)


def supervised_local_contrastive_loss(
    features: tf.Tensor,
    labels: tf.Tensor,
    temperature: float = 0.1,
    mode: str = "stride",
    stride: int = 4,
    block_size: int = 16,
    *,
    chunk_size: int | None = None,
) -> tf.Tensor:
    """Supervised local (pixel) contrastive loss of Hu et al. (2021).

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
          anchor are skipped; the loss is the mean of the other pools'
          losses.
        * ``"full"``: one pool of every pixel of every map (stride 1).

        All modes are exact and never materialise more than one block of
        the similarity matrix: only anchor rows are computed, in blocks of
        [``chunk_size`` anchors of a pool, all keys of the pool], and the
        gradient is accumulated block by block in the forward pass by a
        custom gradient (see :func:`pooled_weighted_lse_sum`); memory is
        O(chunk x N), not N^2.
      stride: subsampling step of ``"stride"`` mode.
      block_size: tile size of ``"block"`` mode.
      chunk_size: anchors per block; ``None`` (default) sizes blocks to about
        ``DEFAULT_CHUNK_ELEMENTS`` similarities (at least ``MIN_CHUNK_ROWS``
        anchors).

    Returns:
      Scalar float32 loss; 0 (with zero gradient) when there is no anchor.
      Use :func:`supervised_local_contrastive_loss_with_count` to also get
      the number of anchors.
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

    z_a, z_b = select(f_a), select(f_b)
    total = nt_xent_from_pairs(z_a, z_b, z_a, z_b, 0, temperature)
    return tf.math.divide_no_nan(total, tf.cast(2 * tf.shape(z_a)[0], tf.float32))
