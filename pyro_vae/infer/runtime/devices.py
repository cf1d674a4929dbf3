"""Where training data and parameters live: device choice, data as one tensor, moved once.

``device="auto"`` picks CUDA when present; data go to the device once when they fit, not batch by
batch; nothing calls ``.cuda()`` blindly, so CPU and GPU runs share one code path (see
docs/design.md, "Devices, dtypes, threads").
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = [
    "DEFAULT_THREADS",
    "as_columns",
    "as_tensor",
    "forked_rng",
    "move_owners",
    "place",
    "resolve_device",
    "set_threads",
]

# One thread: on 2 cores, 2 threads are 1.6x faster idle but 0.4-0.5x beside any other load
# (experiments/bench_threads.py), and one thread makes CPU runs bit-reproducible across machines.
DEFAULT_THREADS = 1


def forked_rng(x: torch.Tensor):
    """A context in which torch's RNG (CPU, and x's GPU if any) is restored on exit.

    For tracing a pair to inspect it (its parameters, layout, reparameterization): asking must
    not change the draws that follow.

    Parameters
    ----------
    x : torch.Tensor
        A tensor on the device whose generator is forked too when it is a GPU.

    Returns
    -------
    contextlib.AbstractContextManager
    """
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device for ``device``: ``"auto"`` is CUDA when present, else CPU.

    Parameters
    ----------
    device : str or torch.device
        ``"auto"``, or anything ``torch.device`` accepts (``"cpu"``, ``"cuda"``, ``"cuda:1"``).

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        When ``device`` names no torch device, is ``"meta"`` (no values to compute with), or
        names a kind (CUDA, MPS, ...) that torch sees none of.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was asked for but torch sees no CUDA device")
    if device.type == "meta":  # shapes without values: every .item() or draw fails
        raise ValueError(
            "device 'meta' holds shapes without values and cannot compute; "
            "use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        )
    backend = getattr(torch, device.type, None)  # torch.mps, torch.xpu, ... have is_available
    if device.type not in ("cpu", "cuda") and not getattr(backend, "is_available", bool)():
        raise ValueError(f"device={str(device)!r} was asked for but torch sees no such device")
    return device


def as_tensor(data) -> tuple[torch.Tensor, Callable]:
    """The datapoints of ``data`` as one tensor, and its per-batch transform.

    Parameters
    ----------
    data : torch.Tensor of shape (N, ...), object with a tensor ``.x``, or torch Dataset
        An object with ``.x`` (e.g. :class:`pyro_vae.data.ImageData`) may carry a
        ``batch_transform``; a ``Dataset`` is stacked item by item (the first element of a
        tuple item).

    Returns
    -------
    x : torch.Tensor of shape (N, ...)
        The data as they are, never cast: the pair doctor names data of a dtype the pair
        cannot take (:func:`~pyro_vae.infer.pair.doctor.trace_pair`), where every other tool
        would meet them too.
    transform : callable
        ``transform(batch) -> batch``, e.g. dynamic binarization; the identity if ``data``
        has none.

    Raises
    ------
    TypeError
        When ``data`` is neither a tensor nor a torch Dataset.
    ValueError
        When ``data`` holds no datapoints.
    """
    identity = lambda batch: batch  # noqa: E731
    if isinstance(data, torch.Tensor):
        x, transform = data, identity
    elif isinstance(getattr(data, "x", None), torch.Tensor):
        x, transform = data.x, getattr(data, "batch_transform", identity)
    elif isinstance(data, torch.utils.data.TensorDataset):
        x, transform = data.tensors[0], identity
    elif isinstance(data, torch.utils.data.Dataset):
        items = [data[i] for i in range(len(data))]
        x = torch.stack([it[0] if isinstance(it, tuple | list) else it for it in items])
        transform = identity
    else:
        raise TypeError(f"data must be a tensor or a torch Dataset, not {type(data).__name__}")
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"data holds no datapoints (shape {tuple(x.shape)})")
    return x, transform


def as_columns(data, name: str = "data") -> tuple[torch.Tensor, tuple[torch.Tensor, ...], Callable]:
    """The datapoints of ``data`` and the per-datapoint tensors that go with them (e.g. labels).

    Parameters
    ----------
    data : anything :func:`as_tensor` takes, or a tuple ``(x, *extras)``
        In a tuple, ``x`` is anything :func:`as_tensor` takes (e.g. an
        :class:`~pyro_vae.data.ImageData`, whose ``batch_transform`` is kept) and each extra
        is a tensor of shape (N, ...) with one row per datapoint of ``x``: a batch of rows
        ``idx`` is served as ``model(x[idx], *(e[idx] for e in extras))``.
    name : str
        What to call ``data`` in error messages.

    Returns
    -------
    x : torch.Tensor of shape (N, ...)
        As :func:`as_tensor` returns it.
    extras : tuple of torch.Tensor of shape (N, ...)
        Empty unless ``data`` is a tuple; kept in their dtype (integer labels stay integers).
    transform : callable
        ``x``'s per-batch transform.

    Raises
    ------
    TypeError
        When ``x`` is neither a tensor nor a Dataset, or an extra is not a tensor.
    ValueError
        When ``data`` is an empty tuple, or an extra does not have one row per datapoint.
    """
    if not isinstance(data, tuple | list):
        x, transform = as_tensor(data)
        return x, (), transform
    if not data:
        raise ValueError(f"{name} is an empty tuple; expected (x, *extras)")
    x, transform = as_tensor(data[0])
    extras = tuple(data[1:])
    for i, extra in enumerate(extras, start=1):
        if not isinstance(extra, torch.Tensor):
            raise TypeError(f"{name}[{i}] must be a tensor, not {type(extra).__name__}")
        rows = extra.shape[0] if extra.dim() else 0
        if rows != x.shape[0]:
            raise ValueError(
                f"{name}[{i}] has {rows} rows but {name}[0] holds {x.shape[0]} datapoints: "
                "every element of the tuple needs one row per datapoint"
            )
    return x, extras, transform


def place(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move data to the device once when it fits in half the free memory; else batch by batch.

    Parameters
    ----------
    x : torch.Tensor of shape (N, ...)
        The whole data set.
    device : torch.device
        The training device.

    Returns
    -------
    torch.Tensor of shape (N, ...)
        ``x`` on ``device``, or, on CUDA when it does not fit in half the free GPU memory, in
        pinned CPU memory so that each batch is copied over asynchronously.
    """
    if device.type != "cuda":
        return x.to(device)
    free, _ = torch.cuda.mem_get_info(device)
    return x.to(device) if x.numel() * x.element_size() < free / 2 else x.pin_memory()


def move_owners(device: torch.device, *fns) -> None:
    """Move the ``nn.Module`` behind each bound method (e.g. ``vae.model``) to ``device``.

    Parameters
    ----------
    device : torch.device
        The training device.
    *fns : callable
        Model and guide callables; those that are not bound methods of an ``nn.Module`` are
        left alone.

    Returns
    -------
    None
    """
    for fn in fns:
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, torch.nn.Module):
            owner.to(device)


def set_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op CPU threads; ``None`` keeps the library default (see docs/design.md).

    Parameters
    ----------
    num_threads : int or None
        Threads for CPU kernels, at least 1. ``None`` applies :data:`DEFAULT_THREADS`.

    Returns
    -------
    int
        The number of threads now in force.

    Raises
    ------
    ValueError
        When ``num_threads`` is not a positive integer.
    """
    if num_threads is None:
        num_threads = DEFAULT_THREADS
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"threads must be a positive integer, got {num_threads!r}")
    torch.set_num_threads(num_threads)
    return torch.get_num_threads()
