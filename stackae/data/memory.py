"""How much memory an allocation may take, so one that cannot fit is refused before it is tried."""

import os
import resource

from stackae.errors import DataError, Param

# What is left for everything else (Keras, the batches) when data takes what it may.
HEADROOM = 1 << 28


def size_text(n_bytes):
    """A byte count as people read it: 3.1 GB, 800 bytes."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= size:
            return f"{n_bytes / size:.1f} {unit}"
    return f"{int(n_bytes)} bytes"


def _meminfo_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_left():
    """memory.max - memory.current of this process's cgroup (v2), or None."""
    try:
        with open("/proc/self/cgroup") as f:
            group = next(line.split(":", 2)[2].strip() for line in f if line.startswith("0::"))
        folder = os.path.join("/sys/fs/cgroup", group.lstrip("/"))
        with open(os.path.join(folder, "memory.max")) as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open(os.path.join(folder, "memory.current")) as f:
            return int(limit) - int(f.read().strip())
    except (OSError, ValueError, StopIteration):
        return None


def _address_space_left():
    """RLIMIT_AS minus the address space already mapped (ulimit -v), or None."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        mapped = 0
    return soft - mapped


def available():
    """Bytes this process can still allocate: the least of free RAM, its cgroup and its rlimit."""
    known = [n for n in (_meminfo_available(), _cgroup_left(), _address_space_left()) if n]
    return max(0, min(known) - HEADROOM) if known else None


def fits(n_bytes):
    room = available()
    return room is None or n_bytes <= room


def check_fits(n_bytes, what):
    """Refuse, in one line, an allocation of n_bytes that the memory left cannot hold."""
    room = available()
    if room is not None and n_bytes > room:
        raise DataError(
            f"{what} needs {size_text(n_bytes)} of memory, more than the "
            f"{size_text(room)} available; use",
            Param("limit", None),
            "(or save the data as .npy, which streams)",
        )


# Bytes of one float32, and the copies of each weight training holds: the weight,
# its gradient, two optimizer slots (Adam's moments; SGD's momentum uses one) and a copy.
FLOAT = 4
WEIGHT_COPIES = 5
# Tensors of a batch in training per value of a layer's input and output: input,
# corrupted input, hidden, reconstruction and their gradients.
ACTIVATION_COPIES = 6


def training_bytes(n_rows, sizes, batch_sizes, data_bytes=0):
    """About the most bytes greedy pretraining of a stack holds at once, on top of the data.

    `sizes`: the input width then each layer's units; `batch_sizes`: one per layer.
    Layer k holds its weights with their gradients and optimizer state, a batch's
    activations, the codes of every row it was handed (k > 0), and the codes it
    hands up to the next layer (computed, then gathered: twice). `data_bytes`:
    the float32 rows held in memory, which the training pipeline copies once
    (rows streamed from disk are not copied).
    """
    largest = 0
    for k, (n_in, units) in enumerate(zip(sizes, sizes[1:])):
        weights = n_in * units + n_in + units
        need = FLOAT * WEIGHT_COPIES * weights
        need += FLOAT * ACTIVATION_COPIES * min(batch_sizes[k], n_rows) * (n_in + units)
        if k > 0:
            need += FLOAT * n_rows * n_in
        if k + 1 < len(sizes) - 1:
            need += 2 * FLOAT * n_rows * units
        largest = max(largest, need)
    return largest + data_bytes


def check_training(n_rows, sizes, batch_sizes, data_bytes=0):
    """RunError (one line) where pretraining this stack cannot fit in the memory left."""
    from stackae.errors import RunError

    need = training_bytes(n_rows, sizes, batch_sizes, data_bytes)
    room = available()
    if room is not None and need > room:
        shown = "-".join(str(n) for n in sizes)
        raise RunError(
            f"layers {shown}: training on {n_rows} rows needs about {need / 2**30:.1f} GiB "
            "(weights, optimizer state, a batch's activations, the codes each layer hands "
            f"up, the training copy of the rows); {room / 2**30:.1f} GiB of memory is available"
        )
