"""The security boundary for pickled data: an unpickler that builds numpy arrays and nothing else.

A pickle can call any importable function while it loads; this one resolves only
the few globals that rebuild numpy arrays and tuples, and refuses every other name
before anything runs.
"""

import codecs
import pickle

import numpy as np

# The only globals a pickle of numpy arrays and tuples needs; anything else is refused.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(1))[0],
    ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(1))[0],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Protocol 5 rebuilds arrays from buffers; Python 3's protocol <= 2 encodes bytes.
    ("numpy.core.numeric", "_frombuffer"): np.ndarray.__reduce_ex__(np.zeros(1), 5)[0],
    ("numpy._core.numeric", "_frombuffer"): np.ndarray.__reduce_ex__(np.zeros(1), 5)[0],
    ("_codecs", "encode"): codecs.encode,
}


class ArrayUnpickler(pickle.Unpickler):
    """Unpickler that builds numpy arrays and tuples and nothing else."""

    def find_class(self, module, name):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only numpy arrays are allowed"
            ) from None


def load_arrays(file):
    """The object pickled in a binary file, if it is made of numpy arrays, tuples and lists.

    Raises pickle.UnpicklingError naming the first global that is not allowed.
    """
    # latin1: the tutorial's file was pickled by Python 2.
    return ArrayUnpickler(file, encoding="latin1").load()
