"""Local (pixel-level) contrastive losses on decoder feature maps.

* :func:`supervised_local_contrastive_loss` - the supervised local loss of
  Hu et al., MICCAI 2021, with the ``stride``, ``block`` and ``full`` pooling
  strategies (``full`` is exact and memory-bounded: chunked anchors, streaming
  log-sum-exp and a custom gradient).
* :func:`self_supervised_local_contrastive_loss` - the 9/13-point local loss of
  Chaitanya et al., NeurIPS 2020, used as a baseline.

All arithmetic is float32 whatever the input dtype. Features are L2-normalised
over channels here (autodiff handles the normalisation).

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
    "DEFAULT_CHUNK_SIZE",
    "supervised_local_contrastive_loss",
    "supervised_local_contrastive_loss_with_count",
    "self_supervised_local_contrastive_loss",
    "local_contrastive_points",
]

# Anchors per chunk in ``mode="full"``: peak extra memory is about
# 3 * DEFAULT_CHUNK_SIZE * N * 4 bytes for N points in the pool.
DEFAULT_CHUNK_SIZE = 256

# Finite "minus infinity" for masked logits (exp underflows to exactly 0 while
# values and gradients stay finite, even for rows that are entirely masked).
_NEG = -1.0e9

_MODES = ("stride", "block", "full")


def _normalize(features: tf.Tensor) -> tf.Tensor:
    features = tf.convert_to_tensor(features)
    if features.dtype != tf.float32:
        features = tf.cast(features, tf.float32)
    return tf.math.l2_normalize(features, axis=-1)


# --------------------------------------------------------------------------
# Batched pools: stride and block modes
# --------------------------------------------------------------------------


def _batched_pool_loss(
    x: tf.Tensor, y: tf.Tensor, valid: tf.Tensor | None, temperature: float
) -> tuple[tf.Tensor, tf.Tensor]:
    """Mean supervised contrastive loss over ``T`` pools of ``n`` points.

    Only anchor rows are materialised: the anchors of every pool are moved to
    the front (stable sort) and padded to ``m_max`` = the largest number of
    anchors in a pool, so the similarity block is ``[T, m_max, n]``.

    Args:
      x: [T, n, C] L2-normalised float32 features.
      y: [T, n] int32 labels (0 = background).
      valid: [T, n] bool, False for padding points (not in the pool at all),
        or None when every point is real.
      temperature: ``t``.

    Returns:
      (loss, num_anchors): scalar float32 mean over the pools that have at
      least one anchor of the pool losses (0 if there is none), and the scalar
      int32 total number of anchors.
    """
    inv_t = 1.0 / temperature
    shape = tf.shape(x)
    t_pools, n = shape[0], shape[1]
    channels = x.shape[-1] if x.shape[-1] is not None else shape[2]

    # Per-pool class statistics: counts and feature sums of (pool, label).
    uniq, uidx = tf.unique(tf.reshape(y, [-1]))
    num_u = tf.size(uniq)
    seg = tf.reshape(uidx, [t_pools, n]) + tf.range(t_pools)[:, None] * num_u  # [T, n]
    flat_seg = tf.reshape(seg, [-1])
    if valid is None:
        point_w = tf.ones([t_pools * n], tf.float32)
        xv = x
    else:
        point_w = tf.reshape(tf.cast(valid, tf.float32), [-1])
        xv = x * tf.cast(valid, tf.float32)[..., None]
    counts = tf.math.unsorted_segment_sum(point_w, flat_seg, t_pools * num_u)  # [T*U]
    sums = tf.math.unsorted_segment_sum(
        tf.reshape(xv, [-1, channels]), flat_seg, t_pools * num_u
    )  # [T*U, C]

    is_anchor = tf.logical_and(y != 0, tf.gather(counts, seg) >= 2.0)
    if valid is not None:
        is_anchor = tf.logical_and(is_anchor, valid)
    m = tf.reduce_sum(tf.cast(is_anchor, tf.int32), axis=1)  # [T]
    m_max = tf.reduce_max(m)
    order = tf.argsort(
        tf.cast(is_anchor, tf.int32), axis=1, direction="DESCENDING", stable=True
    )[:, :m_max]  # [T, m_max] anchors first
    row_valid = tf.range(m_max)[None, :] < m[:, None]  # [T, m_max]

    q = tf.gather(x, order, batch_dims=1)  # [T, m_max, C]
    logits = tf.matmul(q * inv_t, x, transpose_b=True)  # [T, m_max, n]
    if valid is not None:
        key_bias = tf.where(valid, 0.0, _NEG)  # [T, n]
        logits = logits + key_bias[:, None, :]
    # Exclude k == i from the denominator.
    t_idx = tf.broadcast_to(tf.range(t_pools)[:, None], tf.shape(order))
    r_idx = tf.broadcast_to(tf.range(m_max)[None, :], tf.shape(order))
    self_pos = tf.reshape(tf.stack([t_idx, r_idx, order], axis=-1), [-1, 3])
    logits = tf.tensor_scatter_nd_update(
        logits, self_pos, tf.fill(tf.shape(self_pos)[:1], tf.constant(_NEG, tf.float32))
    )
    lse = tf.reduce_logsumexp(logits, axis=-1)  # [T, m_max]

    seg_q = tf.gather(seg, order, batch_dims=1)  # [T, m_max]
    class_sum = tf.gather(sums, seg_q)  # [T, m_max, C]
    num_pos = tf.maximum(tf.gather(counts, seg_q) - 1.0, 1.0)
    pos = (tf.reduce_sum(q * class_sum, -1) - tf.reduce_sum(q * q, -1)) * inv_t / num_pos
    per_anchor = tf.where(row_valid, lse - pos, 0.0)

    pool_loss = tf.math.divide_no_nan(tf.reduce_sum(per_anchor, axis=1), tf.cast(m, tf.float32))
    num_pools = tf.reduce_sum(tf.cast(m > 0, tf.float32))
    loss = tf.math.divide_no_nan(tf.reduce_sum(pool_loss), num_pools)
    return loss, tf.reduce_sum(m)


def _tiles(
    x: tf.Tensor, y: tf.Tensor, block_size: int
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor | None]:
    """Cuts maps into ``block_size`` tiles; one pool per tile position.

    Tiles start at multiples of ``block_size`` from the top-left; when H or W
    is not a multiple, the last row/column of tiles is smaller (the bottom /
    right remainder), so every pixel belongs to exactly one tile. Internally
    the maps are zero-padded to a multiple and the padding is marked invalid.

    Args:
      x: [B, H, W, C] features. y: [B, H, W] labels.

    Returns:
      x: [T, B*bs*bs, C], y: [T, B*bs*bs], valid: [T, B*bs*bs] bool or None
      when no padding was needed. T = ceil(H/bs) * ceil(W/bs).
    """
    bs = block_size
    static_hw = x.shape[1:3]
    dyn = tf.shape(x)
    b, h, w = dyn[0], dyn[1], dyn[2]
    channels = x.shape[-1] if x.shape[-1] is not None else dyn[3]
    nh = (h + bs - 1) // bs
    nw = (w + bs - 1) // bs
    exact = (
        static_hw[0] is not None
        and static_hw[1] is not None
        and static_hw[0] % bs == 0
        and static_hw[1] % bs == 0
    )
    valid = None
    if not exact:
        pads = [[0, 0], [0, nh * bs - h], [0, nw * bs - w]]
        valid = tf.pad(tf.ones([b, h, w], tf.int32), pads) > 0
        x = tf.pad(x, pads + [[0, 0]])
        y = tf.pad(y, pads)

    def to_pools(t: tf.Tensor, depth: list) -> tf.Tensor:
        t = tf.reshape(t, tf.stack([b, nh, bs, nw, bs] + depth))
        t = tf.transpose(t, [1, 3, 0, 2, 4] + ([5] if depth else []))
        return tf.reshape(t, tf.stack([nh * nw, b * bs * bs] + depth))

    x = to_pools(x, [channels])
    y = to_pools(y, [])
    if valid is not None:
        valid = to_pools(valid, [])
    return x, y, valid


# --------------------------------------------------------------------------
# Full mode: chunked anchors, streaming log-sum-exp, custom gradient
# --------------------------------------------------------------------------


def _set_self(x: tf.Tensor, self_c: tf.Tensor, value: float) -> tf.Tensor:
    """Sets x[r, self_c[r]] = value for every row r of a [c, N] chunk."""
    rows = tf.range(tf.shape(self_c)[0])
    return tf.tensor_scatter_nd_update(
        x, tf.stack([rows, self_c], axis=1), tf.fill(tf.shape(self_c), tf.constant(value, tf.float32))
    )


def streaming_masked_lse(
    queries: tf.Tensor,
    keys: tf.Tensor,
    self_index: tf.Tensor,
    temperature: float,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_logit: float | None = None,
) -> tf.Tensor:
    """``log sum_{k != self_index[i]} exp(queries_i . keys_k / t)`` per query.

    Exact, with peak memory O(chunk_size * N): queries are processed in chunks
    of ``chunk_size`` rows (last chunk ragged) inside ``tf.while_loop``; the
    backward pass recomputes each chunk's similarities instead of storing
    them (gradient: ``dq_i = (dy_i/t) sum_k p_ik k_k``, ``dk_k = sum_i
    (dy_i/t) p_ik q_i`` with ``p`` the masked softmax of row ``i``). Works in
    eager mode and inside ``tf.function`` with a dynamic number of queries
    (including zero).

    The row shift of the exponentials is folded into the matmul by an extra
    channel (keys get a constant 1, queries ``-shift``), so each chunk costs
    one matmul and one ``exp`` pass forward and backward.

    Args:
      queries: [M, C] float32. keys: [N, C] float32.
      self_index: [M] int32, the key column excluded from query i's sum.
      temperature: ``t``. chunk_size: queries per chunk.
      max_logit: an upper bound of every logit (``1/t`` for unit vectors),
        used as a fixed shift; ``None`` computes each row's maximum (one more
        pass). Must be such that ``exp(logit - max_logit)`` does not
        underflow for every term of a row (for unit vectors: ``2/t < 80``).

    Returns:
      [M] float32.
    """
    inv_t = 1.0 / temperature
    self_index = tf.cast(self_index, tf.int32)
    # At least one (possibly empty) chunk: concat of an empty TensorArray fails.
    num_chunks = tf.maximum((tf.shape(queries)[0] + chunk_size - 1) // chunk_size, 1)
    q_elem = tf.TensorShape([None]).concatenate(queries.shape[1:])

    def chunk(i: tf.Tensor, t: tf.Tensor) -> tf.Tensor:
        return t[i * chunk_size : (i + 1) * chunk_size]

    @tf.custom_gradient
    def _lse(q: tf.Tensor, k: tf.Tensor):
        # stop_gradient: nothing of the forward loop is recorded on a tape.
        q_sg = tf.stop_gradient(q) * inv_t  # [M, C]
        k_sg = tf.stop_gradient(k)
        # [C+1, N]: keys transposed plus a row of ones carrying the shift.
        k_aug = tf.concat([tf.transpose(k_sg), tf.ones([1, tf.shape(k_sg)[0]], tf.float32)], 0)

        def fwd_body(i, out):
            q_c, self_c = chunk(i, q_sg), chunk(i, self_index)
            if max_logit is None:
                logits = tf.matmul(q_c, k_aug[:-1])
                lse_c = tf.reduce_logsumexp(_set_self(logits, self_c, _NEG), axis=1)
            else:
                shift = tf.fill(tf.shape(q_c)[:1], tf.constant(-max_logit, tf.float32))
                e = tf.exp(tf.matmul(tf.concat([q_c, shift[:, None]], 1), k_aug))
                lse_c = tf.math.log(tf.reduce_sum(_set_self(e, self_c, 0.0), axis=1)) + max_logit
            return i + 1, out.write(i, lse_c)

        out = tf.TensorArray(
            tf.float32, size=num_chunks, element_shape=tf.TensorShape([None]), infer_shape=False
        )
        _, out = tf.while_loop(
            lambda i, _: i < num_chunks, fwd_body, (tf.constant(0), out), parallel_iterations=1
        )
        lse = out.concat()

        def grad(dlse: tf.Tensor):
            d = tf.convert_to_tensor(dlse)[:, None] * inv_t  # [M, 1]

            def bwd_body(i, dk_t, dq_out):
                q_c = chunk(i, q_sg)
                # p = masked softmax rows: exp(q.k/t - lse) with exp(self) := 0.
                q_aug = tf.concat([q_c, -chunk(i, lse)[:, None]], 1)
                p = _set_self(tf.exp(tf.matmul(q_aug, k_aug)), chunk(i, self_index), 0.0)
                d_c = chunk(i, d)
                dq_c = tf.matmul(p, k_sg) * d_c  # [c, C]
                dk_t = dk_t + tf.matmul(q_c * (d_c * temperature), p, transpose_a=True)  # [C, N]
                return i + 1, dk_t, dq_out.write(i, dq_c)

            dq_out = tf.TensorArray(tf.float32, size=num_chunks, element_shape=q_elem, infer_shape=False)
            _, dk_t, dq_out = tf.while_loop(
                lambda i, *_: i < num_chunks,
                bwd_body,
                (tf.constant(0), tf.zeros_like(k_aug[:-1]), dq_out),
                parallel_iterations=1,
            )
            return dq_out.concat(), tf.transpose(dk_t)

        return lse, grad

    return _lse(queries, keys)


def _full_loss(
    x: tf.Tensor, y: tf.Tensor, temperature: float, chunk_size: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """One pool of all N points, exact, O(chunk_size * N) memory.

    Args:
      x: [N, C] L2-normalised float32 features. y: [N] int32 labels.

    Returns:
      (loss, num_anchors) as in :func:`_batched_pool_loss`.
    """
    inv_t = 1.0 / temperature
    uniq, seg = tf.unique(y)
    num_u = tf.size(uniq)
    counts = tf.math.unsorted_segment_sum(tf.ones_like(y, tf.float32), seg, num_u)  # [U]
    sums = tf.math.unsorted_segment_sum(x, seg, num_u)  # [U, C]
    is_anchor = tf.logical_and(y != 0, tf.gather(counts, seg) >= 2.0)
    anchor_idx = tf.cast(tf.where(is_anchor)[:, 0], tf.int32)  # [M]
    q = tf.gather(x, anchor_idx)  # [M, C]
    # |logit| <= 1/t for unit vectors: fixed shift unless exp(-2/t) could underflow.
    max_logit = inv_t if 2.0 * inv_t < 80.0 else None
    lse = streaming_masked_lse(q, x, anchor_idx, temperature, chunk_size, max_logit)  # [M]
    seg_q = tf.gather(seg, anchor_idx)
    num_pos = tf.maximum(tf.gather(counts, seg_q) - 1.0, 1.0)
    pos = (tf.reduce_sum(q * tf.gather(sums, seg_q), -1) - tf.reduce_sum(q * q, -1)) * inv_t / num_pos
    num_anchors = tf.size(anchor_idx)
    loss = tf.math.divide_no_nan(tf.reduce_sum(lse - pos), tf.cast(num_anchors, tf.float32))
    return loss, num_anchors


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
    chunk_size: int = DEFAULT_CHUNK_SIZE,
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
    x = _normalize(features)  # [B, H, W, C]
    y = tf.cast(labels, tf.int32)  # [B, H, W]
    if x.shape.rank is not None and x.shape.rank != 4:
        raise ValueError(f"features must be [B, H, W, C], got shape {x.shape}")
    channels = x.shape[-1] if x.shape[-1] is not None else tf.shape(x)[-1]

    if mode == "full":
        return _full_loss(
            tf.reshape(x, [-1, channels]), tf.reshape(y, [-1]), temperature, int(chunk_size)
        )
    if mode == "stride":
        if int(stride) < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        xs = x[:, :: int(stride), :: int(stride), :]
        ys = y[:, :: int(stride), :: int(stride)]
        return _batched_pool_loss(
            tf.reshape(xs, [1, -1, channels]), tf.reshape(ys, [1, -1]), None, temperature
        )
    if int(block_size) < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    xt, yt, valid = _tiles(x, y, int(block_size))
    return _batched_pool_loss(xt, yt, valid, temperature)


def supervised_local_contrastive_loss(
    features: tf.Tensor,
    labels: tf.Tensor,
    temperature: float = 0.1,
    mode: str = "stride",
    stride: int = 4,
    block_size: int = 16,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
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
        * ``"full"``: one pool of every pixel of every map (stride 1),
          computed exactly in chunks of ``chunk_size`` anchors with a
          streaming log-sum-exp and a custom gradient: memory
          O(chunk_size * B*H*W), never the full similarity matrix.
      stride: subsampling step of ``"stride"`` mode.
      block_size: tile size of ``"block"`` mode.
      chunk_size: anchors per chunk in ``"full"`` mode.

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
