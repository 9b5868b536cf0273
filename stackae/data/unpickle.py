"""The security boundary for pickled data: an unpickler that builds numpy arrays and nothing else.

A pickle can call any importable function while it loads; this one resolves only
the few globals that rebuild numpy arrays and tuples, and refuses every other name
before anything runs. It also refuses to allocate an array larger than the
pickle itself could hold: a 200-byte pickle may call `numpy.ndarray((10**7, 784))`.
"""

import codecs
import math
import pickle

import numpy as np

from stackae.errors import DataError

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]
_FROMBUFFER = np.ndarray.__reduce_ex__(np.zeros(1), 5)[0]
# The only globals a pickle of numpy arrays and tuples needs; anything else is refused.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Protocol 5 rebuilds arrays from buffers; Python 3's protocol <= 2 encodes bytes.
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("_codecs", "encode"): codecs.encode,
}


class ArrayUnpickler(pickle.Unpickler):
    """Unpickler that builds numpy arrays and tuples and nothing else.

    `max_bytes`: the most bytes the pickle holds; an array it asks to allocate
    empty (`ndarray(shape)`, `_reconstruct(ndarray, shape)`) may not be larger,
    since an honest pickle carries its arrays' bytes.
    """

    def __init__(self, file, *, max_bytes=None, where="pickle", **kwargs):
        super().__init__(file, **kwargs)
        self.max_bytes, self.where = max_bytes, where
        # One object, so that _reconstruct can recognise it as the ndarray type it stands for.
        self.ndarray = self._ndarray

    def find_class(self, module, name):
        try:
            found = _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only numpy arrays are allowed"
            ) from None
        if found is np.ndarray:
            return self.ndarray
        if found is _RECONSTRUCT:
            return self._reconstruct
        return found

    def _check(self, shape, dtype):
        if self.max_bytes is None:
            return
        try:
            dims = (shape,) if isinstance(shape, int) else tuple(shape)
            n_bytes = math.prod(int(d) for d in dims) * np.dtype(dtype).itemsize
        except (TypeError, ValueError):
            return  # numpy refuses these arguments itself
        if n_bytes > self.max_bytes:
            raise DataError(
                f"{self.where}: the pickle asks for an array of {n_bytes} bytes, "
                f"more than the {self.max_bytes} bytes it holds"
            )

    def _ndarray(self, shape, dtype=float, buffer=None, *args, **kwargs):
        if buffer is None:
            self._check(shape, dtype)
        return np.ndarray(shape, dtype, buffer, *args, **kwargs)

    def _reconstruct(self, subtype, shape, dtype):
        if subtype is self.ndarray:
            subtype = np.ndarray
        self._check(shape, dtype)
        return _RECONSTRUCT(subtype, shape, dtype)


def load_arrays(file, *, max_bytes=None, where="pickle"):
    """The object pickled in a binary file, if it is made of numpy arrays, tuples and lists.

    Raises pickle.UnpicklingError naming the first global that is not allowed,
    DataError for an array larger than `max_bytes`.
    """
    # latin1: the tutorial's file was pickled by Python 2.
    return ArrayUnpickler(file, max_bytes=max_bytes, where=where, encoding="latin1").load()
