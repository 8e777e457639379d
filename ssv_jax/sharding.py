"""Device mesh and shardings: one 'data' axis over every device of every process.

The batch dimension is split over the 'data' axis; parameters and optimiser
state are replicated. Each process feeds its own slice of the global batch
(``global_batch``), so the same code runs on one CPU, one GPU, or a
multi-host TPU pod.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh named 'data' over ``devices`` (default: all devices, all processes).

    Axis type Auto, so plain ``jax.jit`` propagates shardings (``jax.make_mesh``
    would make Explicit axes).
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("data_mesh needs at least one device.")
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over 'data'; other dimensions whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimiser state, RNG keys)."""
    return NamedSharding(mesh, P())


def local_batch_size(global_batch: int, mesh: Mesh | None = None) -> int:
    """This process's share of ``global_batch``; it must split evenly over devices."""
    n_dev = mesh.size if mesh is not None else jax.device_count()
    if global_batch % n_dev:
        raise ValueError(
            f"global batch {global_batch} does not divide over {n_dev} devices; choose a "
            f"multiple of {n_dev} (e.g. "
            f"--config.train.batch_size={max(n_dev, global_batch // n_dev * n_dev)})."
        )
    return global_batch // jax.process_count()


def global_batch(local: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble global jax.Arrays, sharded over 'data', from this process's numpy slices.

    Every field must have the same leading size on every process; the global
    batch is the concatenation of the processes' slices in process order.
    """
    sharding = batch_sharding(mesh)
    sizes = {k: np.shape(v)[0] if np.ndim(v) else None for k, v in local.items()}
    if any(s is None for s in sizes.values()) or len(set(sizes.values())) != 1:
        raise ValueError(
            f"every batch field needs the same leading (batch) dimension; got {sizes}."
        )
    n_local = next(iter(sizes.values()))
    local_devices = len(mesh.local_devices)
    if n_local % local_devices:
        raise ValueError(
            f"this process's batch of {n_local} does not split over its {local_devices} "
            f"local devices; use a global batch divisible by the device count ({mesh.size})."
        )
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()
    }
