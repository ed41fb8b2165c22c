"""Several devices and several processes: joining a multi-process run, each process's share of the
inputs, a data mesh over devices, per-device blocks, and gathering bytes from every process.

    mesh = setup(("10.0.0.1:1234", 2, 0))   # a command, before anything touches a device
    initialize("10.0.0.1:1234", num_processes=2, process_id=0)  # the same, without the rest
    mine = share(paths)                     # this process's contiguous block of the (sorted) inputs
    mesh = data_mesh()                      # 1-D mesh, axis "data", over this process's devices
    rows = allgather_bytes(json.dumps(my_rows).encode())   # every process's bytes, in process order

Inference (``samhq predict`` / ``samhq everything``, ``samhq-eval``; :mod:`samhq_jax.mesh_predictor`)
runs on a mesh of each process's *local* devices: a process works through its own share and meets
the others only to gather results. Training (:mod:`train.step`) uses one mesh over every device of
every process (``data_mesh(jax.devices())``).

XLA's CPU client sizes its thread pool ``max(cores, devices)`` and splits loops by it, and where a
loop is split changes the last bits of some results (transcendentals run vectorised or not): four
forced host devices would otherwise compute other numbers than one. :func:`setup` pins the pool to
``max(cores, MIN_CPU_THREADS)`` (``PJRT_NPROC``, unless already set), so runs on this machine with up
to that many CPU devices agree bit for bit. Accelerators are not affected.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
CPU_THREADS_ENV = "PJRT_NPROC"  # the size of XLA's CPU thread pool, read when the CPU client starts
MIN_CPU_THREADS = 16  # CPU device counts up to this compute the same numbers (see the module docstring)
Item = TypeVar("Item")


def setup(processes: tuple[str, int, int] | None) -> Mesh:
    """What an inference command does before anything touches a device: pin the CPU thread pool
    (``PJRT_NPROC``, unless set: ``max(cores, MIN_CPU_THREADS)``, see the module docstring), join
    the run of ``processes = (coordinator, num_processes, process_id)`` (None: one process), and
    return :func:`data_mesh` over this process's devices."""
    os.environ.setdefault(CPU_THREADS_ENV, str(max(os.cpu_count() or 1, MIN_CPU_THREADS)))
    if processes is not None:
        initialize(*processes)
    return data_mesh()


def initialize(coordinator: str, num_processes: int, process_id: int) -> None:
    """Join the ``num_processes`` processes of a run (``jax.distributed.initialize``): process
    ``process_id`` (0 is the coordinator, listening at ``coordinator = "HOST:PORT"``). Call it before
    anything touches a device; it waits until every process has joined.

    CPU collectives go through gloo (accelerators keep their own), so several processes on one
    machine work as several hosts do. A process that has joined already is left as it is (several
    commands run in one interpreter).
    """
    if jax.distributed.is_initialized():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)


def share(items: Sequence[Item], index: int | None = None, count: int | None = None) -> list[Item]:
    """Process ``index`` of ``count``'s share of ``items``: contiguous blocks in order, the first
    ``len(items) % count`` blocks one item longer, so the shares in process order are ``items``
    again. Default: this process, ``jax.process_index()`` of ``jax.process_count()``."""
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    if not 0 <= index < count:
        raise ValueError(f"process index {index} is not in [0, {count})")
    size, extra = divmod(len(items), count)
    start = index * size + min(index, extra)
    return list(items[start : start + size + (index < extra)])


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: this process's, ``jax.local_devices()``), axis
    :data:`DATA_AXIS`, automatic sharding propagation."""
    devices = jax.local_devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Put a tree (NumPy or jax leaves, identical on every process) on every device of ``mesh``;
    leaves already replicated there are kept as they are."""
    sharding = NamedSharding(mesh, PartitionSpec())

    def put(x: Any) -> jax.Array:
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(put, tree)


def shard_rows(rows: np.ndarray, mesh: Mesh) -> jax.Array:
    """``(N, ...)`` NumPy rows (N a multiple of ``mesh.size``; ``mesh`` of this process's devices)
    -> a jax array split on axis 0 over the devices of ``mesh``, ``N / mesh.size`` rows each."""
    return jax.device_put(rows, NamedSharding(mesh, PartitionSpec(DATA_AXIS)))


def device_blocks(x: jax.Array) -> list[jax.Array]:
    """The blocks of ``x`` (split on axis 0 over this process's devices, or on one device), in order
    along axis 0, each a jax array on its own device (``(N / D, ...)``, D devices)."""
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    return [s.data for s in shards]


def allgather_bytes(blob: bytes) -> list[bytes]:
    """Every process's ``blob``, in process order (one process: ``[blob]``). A collective: every
    process of the run calls it, the same number of times, in the same order."""
    if jax.process_count() == 1:
        return [blob]
    lengths = np.asarray(multihost_utils.process_allgather(np.int32(len(blob)))).reshape(-1)
    padded = np.zeros(max(int(lengths.max()), 1), np.uint8)
    padded[: len(blob)] = np.frombuffer(blob, np.uint8)
    rows = np.asarray(multihost_utils.process_allgather(padded))
    return [row[:n].tobytes() for row, n in zip(rows, lengths.tolist(), strict=True)]
