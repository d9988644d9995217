"""Device mesh and parameter shardings from logical axis names.

Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `kv`, `vocab`, `basis`) as
NNX metadata; `RULES` maps them onto the mesh axes (`data`, `fsdp`, `tensor`). A dimension that
its mesh axis does not divide (9 heads on 2 devices) stays replicated, with a logged note.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch is split over both data-parallel axes

# logical axis -> mesh axis (None: replicated). One table for the whole model.
RULES: dict[str | None, str | None] = {
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv": "tensor",
    "vocab": "tensor",
    "basis": None,
    None: None,
}


def mesh_shape(shape: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """{data, fsdp, tensor} with at most one -1 ("all remaining devices") → concrete sizes."""
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"mesh.shape: unknown axes {unknown}; use {MESH_AXES}")
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh.shape: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"mesh.shape {dict(zip(MESH_AXES, sizes))}: {num_devices} devices are not "
                             f"divisible by {known}")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(f"mesh.shape {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                         f"{num_devices} are available")
    return tuple(sizes)


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    sizes = mesh_shape(shape, len(devices))
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_to_mesh(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    where: str = "") -> P:
    """Logical names of one array → PartitionSpec; undivisible or repeated mesh axes → replicated."""
    used, spec = set(), []
    for dim, name in zip(shape, names):
        axis = RULES.get(name)
        if name not in RULES:
            raise ValueError(f"{where}: logical axis {name!r} has no sharding rule; known: {sorted(map(str, RULES))}")
        if axis is None or mesh.shape[axis] == 1 or axis in used:
            spec.append(None)
            continue
        if dim % mesh.shape[axis]:
            log.info("sharding: %s dim %d (%s) is not divisible by mesh axis %s=%d; replicated",
                     where, dim, name, axis, mesh.shape[axis])
            spec.append(None)
            continue
        used.add(axis)
        spec.append(axis)
    return P(*spec)


def state_shardings(state: nnx.State, mesh: Mesh) -> nnx.State:
    """NamedSharding for every variable of an NNX state, from its `out_sharding` metadata."""

    def one(path, var):
        value = var.get_value() if isinstance(var, nnx.Variable) else var
        meta = var.get_metadata() if isinstance(var, nnx.Variable) else {}
        names = meta.get("out_sharding") or (None,) * len(value.shape)
        where = ".".join(str(p) for p in path)
        if len(names) != len(value.shape):
            raise ValueError(f"{where}: logical axes {names} do not match shape {value.shape}")
        sharding = NamedSharding(mesh, logical_to_mesh(names, value.shape, mesh, where))
        return var.replace(sharding) if isinstance(var, nnx.Variable) else sharding

    return jax.tree_util.tree_map_with_path(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) dim split over data × fsdp; the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def host_batch_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's slice of the global batch → global jax.Arrays sharded over the batch axes."""
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        out[key] = jax.make_array_from_process_local_data(batch_sharding(mesh, value.ndim), value)
    return out


def maybe_initialize_distributed(coordinator: str | None, num_processes: int, process_id: int) -> None:
    """jax.distributed.initialize when a coordinator is configured; a no-op for one process."""
    if not coordinator or num_processes <= 1:
        return
    # CPU processes need a collectives backend to talk to each other (accelerators bring their own).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
