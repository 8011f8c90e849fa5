"""Running cir's batch work on a Ray cluster: connecting, sizing actor pools, shipping results.

Ray is optional (``pip install 'cir[ray]'``). Everything here is imported only when a caller
asks for Ray (``ray=True`` or an address), so without it nothing in cir changes.

``ray`` options across cir take the same values:

- ``None`` / ``False``: no Ray, the local code path;
- ``True`` or ``"local"``: the Ray instance this process is already connected to, else a new
  local one;
- an address (``"auto"``, ``"ray://head:10001"``, ``"10.0.0.5:6379"``): that cluster.

Example:
    >>> ray_data = connect("auto")    # the cluster this machine belongs to
    >>> pool = model_pool()           # one actor per GPU, else one per spare CPU
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cir.errors import CirError, ConfigError

RayOption = bool | str | None
INSTALL_HINT = "pip install 'cir[ray]'"


def wanted(ray: RayOption) -> bool:
    """Whether a ``ray`` option asks for Ray."""
    return ray not in (None, False, "")


def require() -> None:
    """Check that Ray Data is installed.

    Raises:
        ConfigError: it is not, with the command that installs it.
    """
    try:
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"running on Ray needs the Ray Data package, which is not installed; {INSTALL_HINT}"
        ) from None


def connect(ray: RayOption) -> Any:
    """Connect to the Ray cluster ``ray`` names (see the module doc); return ``ray.data``.

    Raises:
        ConfigError: Ray is not installed, or the cluster cannot be reached.
    """
    require()
    import ray as ray_module
    import ray.data

    if not ray_module.is_initialized():
        address = None if ray in (True, "local") else str(ray)
        try:
            ray_module.init(address=address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(
                f"cannot connect to the Ray cluster {address!r} ({exc}); give 'auto' for the "
                "cluster this machine belongs to, ray://HOST:10001, or --ray alone for a local one"
            ) from None
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.raise_original_map_exception = True  # a user's error, not the engine's wrapper
    return ray.data


@dataclass(frozen=True)
class Pool:
    """How many model actors to start and what each one holds."""

    actors: int
    gpus_per_actor: float

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_actor > 0 else "cpu"

    def map_options(self) -> dict[str, Any]:
        """Keyword arguments of ``Dataset.map_batches`` for an actor class over this pool."""
        from ray.data import ActorPoolStrategy

        compute = ActorPoolStrategy(size=self.actors)
        return {"compute": compute, "num_gpus": self.gpus_per_actor, "num_cpus": 1}


def model_pool(workers: int | None = None, device: str | None = None) -> Pool:
    """One actor per GPU of the cluster (or ``workers`` of them); CPU slots when it has none.

    ``device="cpu"`` keeps the actors on CPUs even when the cluster has GPUs.
    """
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if device is not None and not str(device).startswith("cuda"):
        gpus = 0
    if workers is not None and workers < 1:
        raise ConfigError(f"the number of Ray workers must be >= 1, got {workers}")
    if gpus:
        return Pool(workers or gpus, 1.0)
    return Pool(workers or max(1, int(resources.get("CPU", 1)) - 1), 0.0)


def rows_of(dataset: Any) -> Iterator[dict[str, Any]]:
    """The rows of a Ray dataset as they are produced; a cir error raised inside a Ray task or
    actor (a bad image, a model that does not load) is raised here as itself."""
    try:
        yield from dataset.iter_rows()
    except Exception as exc:
        cause = _cir_cause(exc)
        if cause is None:
            raise
        raise cause from None


def _cir_cause(exc: BaseException | None) -> CirError | None:
    """The cir error behind a Ray task error (Ray wraps it, keeping it as ``cause``)."""
    for _ in range(20):
        if exc is None:
            return None
        inner = getattr(exc, "cause", None) or exc.__cause__
        if isinstance(exc, CirError) and not isinstance(inner, CirError):
            return exc
        exc = inner
    return None


# ---------------------------------------------------------------- moving tensors between tasks
def pack(tensor: torch.Tensor) -> tuple[bytes, str]:
    """A float32 tensor as raw bytes and its shape (JSON), for a Ray Data column."""
    array = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
    return array.tobytes(), json.dumps(list(array.shape))


def unpack(data: bytes, shape: str) -> torch.Tensor:
    """The tensor :func:`pack` stored (a copy, owned by the caller)."""
    dims = json.loads(shape)
    return torch.from_numpy(np.frombuffer(data, dtype=np.float32).reshape(dims).copy())
