"""Choosing the tf.distribute strategy from the config and the environment."""

from __future__ import annotations

import json
import os

import tensorflow as tf

from tfsemiseg.errors import TfSemisegError


def configure_logical_cpus(n: int) -> None:
    """Split the CPU into `n` logical devices (must run before TensorFlow initialises)."""
    cpus = tf.config.list_physical_devices("CPU")
    current = tf.config.get_logical_device_configuration(cpus[0])
    if current is not None and len(current) == n:
        return
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError as exc:
        raise TfSemisegError(
            f"cannot create {n} logical CPU devices: TensorFlow is already initialised ({exc}); "
            "set train.devices before any TensorFlow work in this process"
        ) from None


def make_strategy(devices: int = 0) -> tf.distribute.Strategy:
    """The strategy for this process.

    - TF_CONFIG set: MultiWorkerMirroredStrategy (one process per worker).
    - GPUs visible: MirroredStrategy over all of them (or the first `devices`).
    - no GPU and devices > 1: MirroredStrategy over `devices` logical CPU devices
      (useful for tests and for checking distributed code on a laptop).
    - otherwise the default (single-device) strategy.
    """
    if os.environ.get("TF_CONFIG"):
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as exc:
            raise TfSemisegError(f"TF_CONFIG is not valid JSON ({exc})") from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [f"/gpu:{i}" for i in range(len(gpus))][: devices or None]
        return tf.distribute.MirroredStrategy(names) if len(names) > 1 else tf.distribute.OneDeviceStrategy(names[0])
    if devices > 1:
        configure_logical_cpus(devices)
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(devices)])
    return tf.distribute.get_strategy()


def worker_role(strategy: tf.distribute.Strategy) -> tuple[bool, int]:
    """(is_chief, worker index) of this process; (True, 0) unless multi-worker.

    The chief is the "chief" task when the cluster has one, else worker 0: it alone
    writes checkpoints, logs, summaries and results where the run folder says.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True, 0
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    if task_type in (None, "chief"):
        return True, task_id
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return (task_type == "worker" and task_id == 0 and not has_chief), task_id


def worker_barrier(strategy: tf.distribute.Strategy) -> None:
    """Wait until every worker gets here (an all-reduce); a no-op unless multi-worker."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None).numpy()


def replica_gather(x: tf.Tensor) -> tf.Tensor:
    """Concatenate `x` along axis 0 over all replicas (identity on one replica).

    Differentiable: the gradient of each replica's slice is the sum over replicas of the
    upstream gradients, so a loss computed on the gathered batch by every replica and
    scaled by 1/num_replicas has the single-device gradient.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return x
    # tf.identity: a tensor made in this replica's device scope. all_gather uses the
    # input's device as its destination, and under MultiWorkerMirroredStrategy (one
    # replica per worker) an input made outside `strategy.run` (a batch from the
    # distributed iterator) has none: "ValueError: destinations can not be empty".
    out = ctx.all_gather(tf.identity(x), axis=0)
    out.set_shape(tf.TensorShape([None]).concatenate(x.shape[1:]))  # all_gather loses the static shape
    return out


def replica_slice(x: tf.Tensor, local_size) -> tf.Tensor:
    """This replica's part [local_size, ...] of a global-batch tensor x [R * local_size, ...].

    The inverse of `replica_gather` (identity on one replica): randomness drawn for the
    global batch from a seed every replica shares, then sliced, is what one device draws.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return x
    start = tf.cast(ctx.replica_id_in_sync_group, tf.int32) * tf.cast(local_size, tf.int32)
    return x[start : start + local_size]


def num_replicas() -> int:
    """Replicas in sync in the current replica context (1 outside any strategy)."""
    ctx = tf.distribute.get_replica_context()
    return 1 if ctx is None else ctx.num_replicas_in_sync
