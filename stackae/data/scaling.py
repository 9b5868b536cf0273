"""Feature scaling fitted on the training rows: a frozen `Scaler` that a run records and re-applies.

`x_scaled = (x - offset) / scale`, per feature, in float64 (an exporter can build
`keras.layers.Normalization(mean=offset, variance=scale**2)` from it). Kinds:

- "none": values as they are (uint8 pixels are divided by 255 before any
  scaler; that is the pixel format, not a fitted scaling).
- "minmax": each feature into [0, 1] on the training split.
- "standard": each feature to zero mean, unit variance on the training split.
- "global": one min and max over every value of every split, the meaning
  `--scale` had before scalers existed (runs recorded with `"scale": true`).

A feature constant on the rows fitted gets scale 1, so nothing is divided by zero.
"""

from dataclasses import dataclass

import numpy as np

from stackae.config import SCALE_KINDS
from stackae.errors import DataError

KINDS = SCALE_KINDS
FLOAT32_MAX = float(np.finfo(np.float32).max)
LARGEST_SCALE = float(np.sqrt(FLOAT32_MAX))  # its square still fits in float32


class Stats:
    """Per-feature count, min, max, mean and squared deviations, merged block by block (Chan)."""

    def __init__(self, n_features):
        self.n = 0
        self.low = np.full(n_features, np.inf)
        self.high = np.full(n_features, -np.inf)
        self.mean = np.zeros(n_features)
        self.m2 = np.zeros(n_features)

    def add(self, block):
        """Add finite rows (any numeric dtype)."""
        if len(block) == 0:
            return
        block = np.asarray(block, dtype=np.float64)
        n = len(block)
        np.minimum(self.low, block.min(axis=0), out=self.low)
        np.maximum(self.high, block.max(axis=0), out=self.high)
        with np.errstate(over="ignore", invalid="ignore"):
            mean = block.mean(axis=0)
            m2 = np.square(block - mean).sum(axis=0)
            total = self.n + n
            delta = mean - self.mean
            self.mean = self.mean + delta * (n / total)
            self.m2 = self.m2 + m2 + np.square(delta) * (self.n * n / total)
        self.n = total

    @property
    def range(self):
        """(min, max) over every value, as Python floats."""
        return float(self.low.min()), float(self.high.max())


@dataclass(frozen=True, eq=False)
class Scaler:
    """A per-feature affine map fitted on training rows: x -> (x - offset) / scale."""

    kind: str
    offset: np.ndarray
    scale: np.ndarray

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"`kind` must be one of {KINDS}. Received: kind={self.kind!r}")
        offset = np.array(self.offset, dtype=np.float64).reshape(-1)
        scale = np.array(self.scale, dtype=np.float64).reshape(-1)
        if offset.shape != scale.shape:
            raise ValueError(
                f"`offset` and `scale` must have the same length. Received: "
                f"{len(offset)} and {len(scale)}"
            )
        if not (np.isfinite(offset).all() and np.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("`offset` must be finite and `scale` finite and > 0")
        offset.flags.writeable = scale.flags.writeable = False
        object.__setattr__(self, "offset", offset)
        object.__setattr__(self, "scale", scale)

    @property
    def n_features(self):
        return len(self.offset)

    @property
    def identity(self):
        return self.kind == "none"

    @classmethod
    def none(cls, n_features):
        return cls("none", np.zeros(n_features), np.ones(n_features))

    @classmethod
    def fit(cls, kind, *parts, where="data"):
        """A scaler of `kind` fitted on rows: 2-d arrays (a memmap is read in chunks) or `Stats`.

        "global" takes every part (every split); the other kinds are given the
        training rows only. DataError when the statistics do not fit in float64.
        """
        if kind not in KINDS:
            raise ValueError(f"`kind` must be one of {KINDS}. Received: kind={kind!r}")
        stats = [p if isinstance(p, Stats) else _stats_of(p) for p in parts]
        if not stats:
            raise ValueError("Scaler.fit needs at least one array of rows")
        n_features = len(stats[0].low)
        if kind == "none":
            return cls.none(n_features)
        total = stats[0] if len(stats) == 1 else _merged(stats)
        if kind == "global":
            low, high = total.range
            offset, span = np.full(n_features, low), np.full(n_features, high - low)
        elif kind == "minmax":
            offset, span = total.low, total.high - total.low
        else:
            offset, span = total.mean, np.sqrt(total.m2 / max(total.n, 1))
        if not (np.isfinite(offset).all() and np.isfinite(span).all()):
            raise DataError(
                f"{where}: values span more than float64 holds; {kind} scaling cannot be fitted"
            )
        scale = np.where(span > 0, span, 1.0)
        # The saved models scale with keras.layers.Normalization, which holds the mean and
        # the variance (scale ** 2) in float32: refused here, before any training.
        bad = np.flatnonzero((scale >= LARGEST_SCALE) | (np.abs(offset) > FLOAT32_MAX))
        if bad.size:
            j = int(bad[0])
            raise DataError(
                f"{where}: feature {j} spreads over {scale[j]:.3g} around {offset[j]:.3g}, more "
                f"than a saved model scales in float32 ({kind} scaling needs a variance under "
                f"{FLOAT32_MAX:.3g}); divide that column by a power of ten first"
            )
        return cls(kind, offset, scale)

    def transform(self, x, clip=False):
        """Rows (any numeric dtype) -> float32 scaled rows; `clip` puts them into [0, 1]."""
        x = np.asarray(x)
        if self.identity and not clip:
            return np.asarray(x, dtype=np.float32)
        out = np.asarray(x, dtype=np.float64)
        if not self.identity:
            out = (out - self.offset) / self.scale
        if clip:
            out = np.clip(out, 0.0, 1.0)
        return out.astype(np.float32)

    def range_after(self, low, high):
        """(min, max) over features of the scaled values, given per-feature min and max."""
        a, b = (low - self.offset) / self.scale, (high - self.offset) / self.scale
        return float(np.minimum(a, b).min()), float(np.maximum(a, b).max())

    def to_dict(self):
        return {"kind": self.kind, "offset": self.offset.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d, where, n_features=None):
        """A recorded scaler; DataError (one line naming `where`) if it was edited into nonsense."""
        if not isinstance(d, dict):
            raise DataError(f"{where}: scaler must be a mapping, found {type(d).__name__}")
        kind = d.get("kind")
        if kind not in KINDS:
            raise DataError(f"{where}: unknown scaler kind {kind!r} (expected one of {KINDS})")
        arrays = {}
        for key in ("offset", "scale"):
            value = d.get(key)
            try:
                array = np.array(value, dtype=np.float64)
            except (TypeError, ValueError):
                raise DataError(f"{where}: scaler {key} is not a list of numbers") from None
            if array.ndim != 1:
                raise DataError(f"{where}: scaler {key} is not a list of numbers")
            if not np.isfinite(array).all():
                raise DataError(f"{where}: scaler {key} holds NaN or infinity")
            arrays[key] = array
        offset, scale = arrays["offset"], arrays["scale"]
        if len(offset) != len(scale):
            raise DataError(
                f"{where}: scaler offset has {len(offset)} values but scale has {len(scale)}"
            )
        if n_features is not None and len(offset) != n_features:
            raise DataError(
                f"{where}: scaler has {len(offset)} features but the data has {n_features}"
            )
        if (scale <= 0).any():
            bad = int(np.flatnonzero(scale <= 0)[0])
            raise DataError(
                f"{where}: scaler scale must be > 0, found {scale[bad]} (feature {bad})"
            )
        return cls(kind, offset, scale)


def _stats_of(x):
    from stackae.data.rows import raw_blocks  # rows imports this module

    stats = Stats(int(np.shape(x)[1]))
    for _, block in raw_blocks(x):
        stats.add(block)
    return stats


def _merged(parts):
    total = Stats(len(parts[0].low))
    for s in parts:
        if s.n == 0:
            continue
        n = total.n + s.n
        delta = s.mean - total.mean
        total.mean = total.mean + delta * (s.n / n)
        total.m2 = total.m2 + s.m2 + np.square(delta) * (total.n * s.n / n)
        np.minimum(total.low, s.low, out=total.low)
        np.maximum(total.high, s.high, out=total.high)
        total.n = n
    return total
