"""scikit-learn estimators over stackae: an SdA transformer and outlier detector, a classifier
and a regressor.

`pip install "stackae[sklearn]"`. The estimators train with the library's own
calls (`Stack`, `pretrain`, `export`, `finetune`), so they follow the same
settings and seeds as the command line; the per-feature scaling is part of the
estimator, so raw features go in (NumPy arrays or DataFrames). Keras and its
backend load on the first `fit` or unpickling, not on import.

Defaults for tables (they differ from the MNIST tutorial's, which the command
line keeps): one layer of 100 units, 10% masking noise, features standardised
(`scale="standard"`, which gives the first layer a linear decoder, the squared
error and a learning rate of min(0.1, 1 / units): `config.default_layer_settings`),
batches of 32, 10 pretraining epochs per layer, at most 30 fine-tuning epochs
with SGD momentum 0.9 and early stopping (patience 5) on 10% of the rows, a
fine-tuning learning rate of 0.1 (classification) or 0.01 (regression: a linear
output on many sigmoid codes diverges at 0.1), as `stackae.FinetuneSpec`'s
(`config.TASK_DEFAULTS`), and no XLA
(`jit_compile=False`: compiling costs more than it saves on small tables).

Fits of one structure in a process (a search's folds and candidates with the
same layers, settings and `random_state`) share their traced training
programs (`stackae.reuse`): each fit's results are exactly those of a fit of
its own, and a second fit on a few hundred rows takes a fraction of a second
(benchmarks/README.md, small_fit.py).
"""

import math
import os
import random
import tempfile
from numbers import Integral, Real

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassifierMixin,
    ClassNamePrefixFeaturesOutMixin,
    OutlierMixin,
    RegressorMixin,
    TransformerMixin,
)
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from stackae.config import FINETUNE_FIELDS, LAYER_FIELDS, PREDICT_BATCH, SCALE_KINDS

# LayerSpec fields an estimator takes as parameters; None: stackae's default for the scaling.
_LAYER_SETTINGS = (
    "corruption",
    "noise",
    "loss",
    "epochs",
    "batch_size",
    "learning_rate",
    "optimizer",
    "l2",
    "sparsity",
    "sparsity_target",
    "contraction",
    "activation",
    "decoder_activation",
)
_FLOATS = (np.float64, np.float32)
# Fine-tuning parameters named after the FinetuneSpec field they set ("finetune_" where a
# pretraining parameter has the field's name).
_FINETUNE_SETTINGS = {
    "finetune_epochs": "epochs",
    "finetune_batch_size": "batch_size",
    "finetune_learning_rate": "learning_rate",
    "finetune_optimizer": "optimizer",
    "momentum": "momentum",
    "lr_decay": "lr_decay",
    "dropout": "dropout",
    "input_dropout": "input_dropout",
    "patience": "patience",
}
_CLOSED = {
    (False, False): "both",
    (True, False): "right",
    (False, True): "left",
    (True, True): "neither",
}


def _constraint(field):
    """scikit-learn's constraint for a spec field (stackae.config's tables)."""
    if field.choices:
        return StrOptions(set(field.choices))
    if field.kind is str:
        return str
    kind = Integral if field.kind is int else Real
    closed = _CLOSED[field.low_open, field.high is None or field.high_open]
    return Interval(kind, field.low, field.high, closed=closed)


# Parameters whose default None means the library's default for the scaling or the task.
_LIBRARY_DEFAULTS = {"loss", "learning_rate", "activation", "decoder_activation"}
_LIBRARY_DEFAULTS.add("finetune_learning_rate")


def _constraints(names, fields, per_layer=False):
    """{parameter: constraints}: the field's, None where the library decides, and a list or
    tuple for a per-layer parameter (each item is checked by the spec, named as here)."""
    found = {}
    for name, field in zip(names, fields):
        found[name] = [_constraint(field)] + [None] * (name in _LIBRARY_DEFAULTS)
        found[name] += [list, tuple] if per_layer else []
    return found


_BASE_CONSTRAINTS = {
    "layers": [Interval(Integral, 1, None, closed="left"), list, tuple, str],
    "input_shape": [None, list, tuple],
    **_constraints(_LAYER_SETTINGS, [LAYER_FIELDS[name] for name in _LAYER_SETTINGS], True),
    "scale": [StrOptions(set(SCALE_KINDS))],
    "jit_compile": ["boolean"],
    "random_state": ["random_state"],
    "verbose": ["verbose", StrOptions({"auto"})],
}


class _SavedModel:
    """A Keras model as the bytes of its `.keras` file: how the estimators pickle one."""

    def __init__(self, model):
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "model.keras")
            model.save(path)
            with open(path, "rb") as f:
                self.data = f.read()

    def load(self):
        import keras

        _start_backend()
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "model.keras")
            with open(path, "wb") as f:
                f.write(self.data)
            return keras.saving.load_model(path, compile=False)


def _start_backend():
    """Keras and its backend, started quietly once (`stackae.backend.start`)."""
    global _started
    if not _started:
        from stackae import backend

        backend.start()
        _started = True


_started = False


class _StackedBase(BaseEstimator):
    """What the three estimators share: parameters, checks, scaling, pretraining, pickling."""

    # Fitted attributes holding Keras models: pickled as `.keras` bytes.
    _KERAS_ATTRIBUTES = ("stack_", "model_")
    # Checked by `fit` (scikit-learn's `_validate_params`), from the specs' tables.
    _parameter_constraints = _BASE_CONSTRAINTS

    def __init__(
        self,
        layers=(100,),
        *,
        corruption=0.1,
        noise="masking",
        loss=None,
        epochs=10,
        batch_size=32,
        learning_rate=None,
        optimizer="sgd",
        l2=0.0,
        sparsity=0.0,
        sparsity_target=0.05,
        contraction=0.0,
        activation=None,
        decoder_activation=None,
        scale="standard",
        input_shape=None,
        jit_compile=False,
        random_state=None,
        verbose=0,
    ):
        self.layers = layers
        self.corruption = corruption
        self.noise = noise
        self.loss = loss
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.optimizer = optimizer
        self.l2 = l2
        self.sparsity = sparsity
        self.sparsity_target = sparsity_target
        self.contraction = contraction
        self.activation = activation
        self.decoder_activation = decoder_activation
        self.scale = scale
        self.input_shape = input_shape
        self.jit_compile = jit_compile
        self.random_state = random_state
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.input_tags.sparse = False
        return tags

    # ------------------------------------------------------------ fitting

    def _sizes(self):
        if isinstance(self.layers, str):  # the --layers grammar: config.layer_specs parses it
            return self.layers
        layers = (self.layers,) if isinstance(self.layers, int | np.integer) else self.layers
        try:
            return tuple(int(u) if isinstance(u, np.integer) else u for u in layers)
        except TypeError:
            raise ValueError(
                f"`layers` must be a sequence of positive integers. Received: layers={layers!r}"
            ) from None

    def _specs(self, n_rows):
        """The LayerSpecs: stackae's defaults for the scaling, under the settings given."""
        from stackae.config import layer_specs

        settings = {name: getattr(self, name) for name in _LAYER_SETTINGS}
        # A batch larger than the data is clipped: small tables train too.
        batch = settings["batch_size"]
        if isinstance(batch, int) and not isinstance(batch, bool) and batch > n_rows:
            settings["batch_size"] = n_rows
        return layer_specs(self._sizes(), scale=self.scale, **settings)

    def _checked_input_shape(self, specs):
        """The shape of one example the stack reads: a row of X, or where the first layer
        reads images (a conv layer) the row reshaped to `input_shape`; ValueError (one
        line) for a conv layer without `input_shape` or an `input_shape` not of X's width."""
        from stackae.config import is_int
        from stackae.kinds import kind_of

        kind, width, shape = kind_of(specs[0]), self.n_features_in_, self.input_shape
        if shape is None:
            if kind.input_rank > 1:
                raise ValueError(
                    f"A {kind.name} first layer reads images: give input_shape, the shape each "
                    f"row of X is reshaped to, e.g. (28, 28, 1). Received: layers={self.layers!r}"
                    ", input_shape=None"
                )
            return (width,)
        shape = tuple(shape)
        if len(shape) not in (2, 3) or not all(is_int(d) and d >= 1 for d in shape):
            raise ValueError(
                "`input_shape` must be (height, width) or (height, width, channels), positive "
                f"integers. Received: input_shape={self.input_shape!r}"
            )
        shape = tuple(int(d) for d in shape) + (1,) * (3 - len(shape))
        if math.prod(shape) != width:
            raise ValueError(
                f"input_shape={self.input_shape!r} holds {math.prod(shape)} values, but X has "
                f"{width} features"
            )
        return shape if kind.input_rank > 1 else (width,)  # a dense first layer reads rows

    def _seed(self):
        """The int seed of this fit: `random_state` itself when it is an int."""
        state = self.random_state
        if isinstance(state, int | np.integer) and not isinstance(state, bool) and state >= 0:
            return int(state)
        return int(check_random_state(state).randint(0, 2**31 - 1))

    def _fit_scaler(self, X):
        from stackae.data.scaling import Scaler

        self.scaler_ = Scaler.fit(self.scale, X)
        x = self.scaler_.transform(X)
        return x.reshape(len(x), *self._example_shape)  # images where the stack reads them

    def _pretrain(self, x, specs, seed):
        """A Stack of `specs`, initialised from `seed`, pretrained greedily on scaled rows `x`."""
        import stackae
        from stackae import reuse

        if specs[0].loss == "cross-entropy" and (x.min() < 0 or x.max() > 1):
            raise ValueError(
                "The cross-entropy needs features in [0, 1]; use scale='minmax' or 'standard', "
                f"or loss='squared-error'. Received: scale={self.scale!r} and values in "
                f"[{x.min():g}, {x.max():g}]"
            )
        from stackae.data.memory import check_training
        from stackae.workflows import layer_sizes

        sizes = layer_sizes(specs, x.shape[1:])
        # The rows, as float32, are copied once by the training pipeline.
        check_training(len(x), sizes, [s.batch_size for s in specs], 4 * x.size)
        # The initial weights follow from the seed, as in `workflows.new_run` (Keras draws
        # its initializers' seeds from Python's generator, which `keras.utils.set_random_seed`
        # seeds with NumPy's and TensorFlow's; TensorFlow's is left alone here: setting it
        # clears TensorFlow's caches, and the next fit's first step then took 50-70 ms
        # more). Python's and NumPy's global random states are the caller's: put back.
        python_state, numpy_state = random.getstate(), np.random.get_state()
        try:
            random.seed(seed)
            np.random.seed(seed)
            stack = stackae.Stack(specs, seed=seed)
            stack.build((None, *x.shape[1:]))
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
        with reuse.reusing():  # a search's fits of one structure share their traced programs
            stackae.pretrain(stack, x, verbose=self.verbose, jit_compile=self.jit_compile)
        if not all(np.all(np.isfinite(_numpy(w.value))) for w in stack.weights):
            raise _diverged("pretraining", "learning_rate")
        return stack

    def _check_X(self, X, reset):
        return validate_data(self, X, reset=reset, dtype=_FLOATS)

    # ------------------------------------------------------------ pickling

    def __getstate__(self):
        state = dict(super().__getstate__())
        for name in self._KERAS_ATTRIBUTES:
            if state.get(name) is not None:
                state[name] = _SavedModel(state[name])
        state.pop("encoder_", None)  # made again from stack_
        return state

    def __setstate__(self, state):
        state = {
            name: value.load() if isinstance(value, _SavedModel) else value
            for name, value in state.items()
        }
        super().__setstate__(state)
        if getattr(self, "stack_", None) is not None and hasattr(self, "scaler_"):
            self._make_encoder()

    def _make_encoder(self):
        from stackae import export

        shape = getattr(self, "_example_shape", None)
        if shape is None or len(shape) == 1:
            self.encoder_ = export.encoder(self.stack_, scaler=self.scaler_)
        else:
            self.encoder_ = _on_raw_rows(export.encoder(self.stack_), self.scaler_, shape)


def _on_raw_rows(model, scaler, shape):
    """`model` (on scaled examples of `shape`) behind the fitted scaling, and for images a
    `Reshape` to `shape`: raw rows in, as scikit-learn gives them. The layers are shared."""
    from stackae import export

    if len(shape) == 1:
        return export.with_scaling(model, scaler)
    import keras

    width = math.prod(shape)
    scaling = export.scaling_layer(scaler, width)
    return keras.Sequential(
        [
            keras.Input((width,)),
            *([scaling] if scaling is not None else []),
            keras.layers.Reshape(shape, name="images"),
            *model.layers,
        ],
        name=model.name,
    )


def _diverged(phase, parameter):
    from stackae.errors import TrainingDiverged

    return TrainingDiverged(f"{phase}: the cost became NaN or infinite; lower `{parameter}`")


def _outputs(function, x):
    """`function` (a Keras model or a function of tensors) on float32 rows, in chunks, as NumPy."""
    import keras

    from stackae.anomaly import full_batch

    x = np.asarray(x, dtype=np.float32)
    # Full batches: each row's outputs are its own, whatever rows come with it.
    chunks = []
    for i in range(0, len(x), PREDICT_BATCH):
        rows = x[i : i + PREDICT_BATCH]
        chunks.append(_numpy(function(keras.ops.convert_to_tensor(full_batch(rows))))[: len(rows)])
    return np.concatenate(chunks) if chunks else np.zeros((0,), np.float32)


def _numpy(tensor):
    # A TensorFlow tensor's own .numpy(): ops.convert_to_numpy trips a NumPy 2 DeprecationWarning.
    return tensor.numpy() if hasattr(tensor, "numpy") else np.asarray(tensor)


class StackedDenoisingAutoencoder(
    ClassNamePrefixFeaturesOutMixin, TransformerMixin, OutlierMixin, _StackedBase
):
    """A stacked denoising autoencoder as a scikit-learn transformer and outlier detector.

    `fit(X)` standardises the features (`scale`), then pretrains each layer
    greedily as a denoising autoencoder on the clean codes of the layers below
    (`stackae.pretrain`). `transform` returns the top layer's codes,
    `inverse_transform` decodes codes back down every layer to features in
    their raw units, and `score_samples` scores each row by how well the stack
    reconstructs it.

    As an outlier detector it follows `sklearn.ensemble.IsolationForest`:
    `score_samples` is minus each row's reconstruction error (lower is more
    abnormal), `fit` sets `offset_` from the training rows' scores so that
    `decision_function = score_samples - offset_` is negative for outliers,
    and `predict` returns -1 for outliers and +1 for inliers (`fit_predict`:
    both at once). `contamination`: the fraction of training rows expected to
    be outliers, in (0, 0.5], so that `offset_` leaves that fraction of them
    below it; or "auto", a robust rule needing no guess (the errors' median
    plus 3 x 1.4826 x their median absolute deviation; see `stackae.anomaly`).
    `per_feature_errors` says which features made a row anomalous.

    Parameters are `stackae.LayerSpec`'s (each one value, or one per layer);
    `loss`, `learning_rate`, `activation` and `decoder_activation` left None
    take stackae's defaults for the scaling (`config.default_layer_settings`:
    with standardised features a linear first decoder with the squared error).
    `layers`: the sizes of the layers, bottom up, or the command line's
    `--layers` grammar (`stackae.config.layer_specs`), e.g.
    `"conv8x3,pool2,32"`: a conv layer of 8 3x3 filters max-pooled by 2, then
    32 dense units. `input_shape`: None (X's rows are what the stack reads),
    or the image shape each row of X is reshaped to (row-major, as NumPy's
    `reshape`), `(height, width)` or `(height, width, channels)`, e.g.
    `(28, 28, 1)`; a conv first layer needs it, and it must hold X's number of
    features. `encoder_`, `model_` and `transform` still take and give 2-D
    rows (a conv top layer's codes flattened). `scale`: "standard",
    "minmax", "none" or "global" (`stackae.data.scaling.Scaler`), fitted on
    the rows given to `fit` (per feature: per pixel for images, where
    "minmax", or "none" for pixels already in [0, 1], suits better than
    standardising rarely lit pixels to large values). A `batch_size` larger
    than the data is clipped.
    `jit_compile`: XLA for the training programs (faster steps on large data,
    seconds of compiling). `random_state`: an int gives the same weights, noise
    and batch order every fit (it is the stack's seed, as `--seed`), whatever
    the global random states (Python's, NumPy's, TensorFlow's, Keras's), which
    a fit leaves as they were.

    Attributes: `stack_` (the pretrained `stackae.Stack`, on scaled rows),
    `encoder_` (`stackae.export.encoder` with the scaling: raw features in),
    `scaler_`, `offset_` (minus the reconstruction error above which a row is
    an outlier), `n_features_in_`, `feature_names_in_` (DataFrames).
    """

    _parameter_constraints = {
        **_BASE_CONSTRAINTS,
        "contamination": [StrOptions({"auto"}), Interval(Real, 0, 0.5, closed="right")],
    }

    def __init__(
        self,
        layers=(100,),
        *,
        corruption=0.1,
        noise="masking",
        loss=None,
        epochs=10,
        batch_size=32,
        learning_rate=None,
        optimizer="sgd",
        l2=0.0,
        sparsity=0.0,
        sparsity_target=0.05,
        contraction=0.0,
        activation=None,
        decoder_activation=None,
        scale="standard",
        input_shape=None,
        contamination="auto",
        jit_compile=False,
        random_state=None,
        verbose=0,
    ):
        super().__init__(
            layers,
            corruption=corruption,
            noise=noise,
            loss=loss,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            optimizer=optimizer,
            l2=l2,
            sparsity=sparsity,
            sparsity_target=sparsity_target,
            contraction=contraction,
            activation=activation,
            decoder_activation=decoder_activation,
            scale=scale,
            input_shape=input_shape,
            jit_compile=jit_compile,
            random_state=random_state,
            verbose=verbose,
        )
        self.contamination = contamination

    def fit(self, X, y=None):
        """Fit the scaler on X, pretrain the stack on the scaled rows, set `offset_`; self."""
        from stackae import anomaly

        self._validate_params()
        X = self._check_X(X, reset=True)
        contamination = anomaly.check_contamination(self.contamination)
        _start_backend()
        specs = self._specs(len(X))
        self._example_shape = self._checked_input_shape(specs)
        x = self._fit_scaler(X)
        self.stack_ = self._pretrain(x, specs, self._seed())
        self._make_encoder()
        # The training rows' errors place the threshold (`stackae.anomaly.threshold`).
        self.offset_ = -anomaly.threshold(self._errors(X), contamination)
        return self

    @property
    def _n_features_out(self):
        return math.prod(self.encoder_.output_shape[1:])  # a conv layer's codes: flattened

    def transform(self, X):
        """The top layer's codes of raw rows X, (n_rows, layers[-1]), in X's float dtype
        (a conv top layer's feature maps flattened row-major)."""
        check_is_fitted(self)
        X = self._check_X(X, reset=False)
        codes = _outputs(self.encoder_, X)
        return codes.reshape(len(codes), -1).astype(X.dtype, copy=False)

    def inverse_transform(self, X):
        """Rows decoded from top-layer codes X, through every tied decoder, in raw feature units."""
        check_is_fitted(self)
        codes = check_array(X, dtype=_FLOATS)
        width = self._n_features_out
        if codes.shape[1] != width:
            raise ValueError(
                f"X has {codes.shape[1]} features, but {type(self).__name__} "
                f"decodes codes of {width} features"
            )
        shape = self.encoder_.output_shape[1:]  # a conv top layer's code: feature maps

        def decode(code):
            import keras

            if len(shape) > 1:
                code = keras.ops.reshape(code, (-1, *shape))
            return self.stack_.decode(code)

        scaled = _outputs(decode, codes).astype(np.float64)
        raw = scaled.reshape(len(scaled), -1) * self.scaler_.scale + self.scaler_.offset
        return raw.astype(codes.dtype, copy=False)

    def score_samples(self, X):
        """Minus each row's reconstruction error: higher is more normal, lower more anomalous.

        The error is the mean over features of the squared difference between
        the row and its reconstruction (encoded up every layer, decoded back
        down, no noise), both in scaled units, so every feature counts alike
        whatever its raw units. Rank rows by it, or threshold it, to find
        anomalies (scikit-learn's convention, as `IsolationForest`'s).
        """
        check_is_fitted(self)
        return -self._errors(self._check_X(X, reset=False))

    def decision_function(self, X):
        """`score_samples(X) - offset_`: negative for outliers, positive for inliers."""
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """-1 for each outlier row (its `decision_function` below 0), +1 for each inlier."""
        outlier = self.decision_function(X) < 0
        return np.where(outlier, -1, 1)

    def per_feature_errors(self, X):
        """Each row's squared reconstruction error per feature, (n_rows, n_features).

        In the scaled units of `score_samples` (the row means are minus its
        scores): the largest entries of a row name the features that made it
        anomalous. Columns follow `feature_names_in_` when fitted on a DataFrame.
        """
        check_is_fitted(self)
        return self._errors(self._check_X(X, reset=False), per_feature=True)

    def _errors(self, X, per_feature=False):
        from stackae import anomaly

        x = self.scaler_.transform(X)
        return anomaly.reconstruction_errors(self.stack_, x, per_feature=per_feature)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


class _SupervisedBase(_StackedBase):
    """Pretraining, then fine-tuning of an exported classifier or regressor (`stackae.finetune`)."""

    _TASK = None
    _parameter_constraints = {
        **_BASE_CONSTRAINTS,
        **_constraints(
            _FINETUNE_SETTINGS, [FINETUNE_FIELDS[f] for f in _FINETUNE_SETTINGS.values()]
        ),
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],  # config.is_split_size's
    }

    def __init__(
        self,
        layers=(100,),
        *,
        corruption=0.1,
        noise="masking",
        loss=None,
        epochs=10,
        batch_size=32,
        learning_rate=None,
        optimizer="sgd",
        l2=0.0,
        sparsity=0.0,
        sparsity_target=0.05,
        contraction=0.0,
        activation=None,
        decoder_activation=None,
        finetune_epochs=30,
        finetune_batch_size=32,
        finetune_learning_rate=None,
        finetune_optimizer="sgd",
        momentum=0.9,
        lr_decay=1.0,
        dropout=0.0,
        input_dropout=0.0,
        patience=5,
        validation_fraction=0.1,
        scale="standard",
        input_shape=None,
        jit_compile=False,
        random_state=None,
        verbose=0,
    ):
        super().__init__(
            layers,
            corruption=corruption,
            noise=noise,
            loss=loss,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            optimizer=optimizer,
            l2=l2,
            sparsity=sparsity,
            sparsity_target=sparsity_target,
            contraction=contraction,
            activation=activation,
            decoder_activation=decoder_activation,
            scale=scale,
            input_shape=input_shape,
            jit_compile=jit_compile,
            random_state=random_state,
            verbose=verbose,
        )
        self.finetune_epochs = finetune_epochs
        self.finetune_batch_size = finetune_batch_size
        self.finetune_learning_rate = finetune_learning_rate
        self.finetune_optimizer = finetune_optimizer
        self.momentum = momentum
        self.lr_decay = lr_decay
        self.dropout = dropout
        self.input_dropout = input_dropout
        self.patience = patience
        self.validation_fraction = validation_fraction

    def _finetune_spec(self, n_rows):
        from stackae.config import FinetuneSpec, is_int

        batch = self.finetune_batch_size
        return FinetuneSpec(
            epochs=self.finetune_epochs,
            batch_size=min(batch, n_rows) if is_int(batch) else batch,
            learning_rate=self.finetune_learning_rate,  # None: the task's (config.TASK_DEFAULTS)
            optimizer=self.finetune_optimizer,
            patience=self.patience,
            momentum=self.momentum,
            lr_decay=self.lr_decay,
            dropout=self.dropout,
            input_dropout=self.input_dropout,
            task=self._TASK,
        )

    def _split(self, n_rows, seed, stratify=None):
        """(train rows, validation rows or None): `validation_fraction` of the rows, drawn."""
        fraction = self.validation_fraction
        rows = np.arange(n_rows)
        n_valid = int(round(fraction * n_rows))
        if n_valid < 1 or n_rows - n_valid < 1:  # too few rows to hold any out: no early stopping
            return rows, None
        if stratify is not None:
            counts = np.bincount(stratify)
            if counts[counts > 0].min() < 2 or not (
                np.count_nonzero(counts) <= n_valid <= n_rows - np.count_nonzero(counts)
            ):
                stratify = None
        return train_test_split(rows, test_size=n_valid, random_state=seed, stratify=stratify)

    def _fit_supervised(self, X, y, n_outputs, stratify=None):
        """Scale, split, pretrain, export the model for the task, fine-tune it; `y` as trained."""
        from stackae import reuse
        from stackae.finetuning import finetune, prepare, task_model

        _start_backend()
        seed = self._seed()
        train, valid = self._split(len(X), seed, stratify)
        specs = self._specs(len(train))
        self._example_shape = self._checked_input_shape(specs)
        spec = self._finetune_spec(len(train))
        x = self._fit_scaler(X)
        stack = self._pretrain(x[train], specs, seed)
        # The command line's setup: for regression, targets standardised on the training rows.
        model = task_model(stack, spec, n_outputs, y[train])
        finetuner, stopper = prepare(
            model, spec, seed=seed, validation=valid is not None, jit_compile=self.jit_compile
        )
        with reuse.reusing():
            history = finetune(
                model,
                (x[train], y[train]),
                None if valid is None else (x[valid], y[valid]),
                spec,
                verbose=self.verbose,
                finetuner=finetuner,
                early_stopping=stopper,
            )
        if not np.all(np.isfinite(history.history.get("loss", [0.0]))):
            raise _diverged("fine-tuning", "finetune_learning_rate")
        self.history_ = {k: [float(v) for v in values] for k, values in history.history.items()}
        self.n_iter_ = len(history.history.get("loss", []))
        self.best_epoch_ = None if stopper is None else stopper.best_epoch
        # Raw features in: the fitted scaling goes first (then a Reshape for images).
        self.model_ = _on_raw_rows(model, self.scaler_, self._example_shape)
        return self

    def _outputs(self, X):
        check_is_fitted(self)
        X = self._check_X(X, reset=False)
        return _outputs(self.model_, X).astype(np.float64)


class SdAClassifier(ClassifierMixin, _SupervisedBase):
    """A stacked denoising autoencoder, pretrained then fine-tuned as a softmax classifier.

    `fit(X, y)` standardises the features, holds out `validation_fraction` of
    the rows (stratified where every class allows) for early stopping on the
    validation accuracy (`patience` epochs), pretrains the stack on the other
    rows (`stackae.pretrain`), and fine-tunes `stackae.export.classifier` on
    them (`stackae.finetune`), keeping the best epoch's weights.
    `validation_fraction=0` trains for `finetune_epochs` without stopping.

    Pretraining parameters are `StackedDenoisingAutoencoder`'s; fine-tuning
    ones are `stackae.FinetuneSpec`'s, prefixed `finetune_` where a name is
    shared (`finetune_epochs`, `finetune_batch_size`, `finetune_learning_rate`,
    `finetune_optimizer`).

    Attributes: `classes_`, `model_` (a plain Keras model: raw features in,
    class probabilities out), `scaler_`, `n_iter_` (fine-tuning epochs run),
    `best_epoch_`, `history_`, `n_features_in_`, `feature_names_in_`.
    """

    _TASK = "classification"

    def fit(self, X, y):
        """Pretrain and fine-tune on rows X with class labels y. Returns self."""
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=_FLOATS)
        check_classification_targets(y)
        self.classes_, labels = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                "SdAClassifier needs samples of at least 2 classes in the data. "
                f"Received: one class, {self.classes_[0]!r}"
            )
        return self._fit_supervised(X, labels.astype(np.int64), len(self.classes_), labels)

    def predict_proba(self, X):
        """Class probabilities (n_rows, n_classes), columns in the order of `classes_`."""
        probabilities = self._outputs(X)
        return probabilities / probabilities.sum(axis=1, keepdims=True)

    def predict(self, X):
        """The most probable class of each row."""
        probabilities = self.predict_proba(X)
        return self.classes_[np.argmax(probabilities, axis=1)]


class SdARegressor(RegressorMixin, _SupervisedBase):
    """A stacked denoising autoencoder, pretrained then fine-tuned as a linear regressor.

    As `SdAClassifier`, with `stackae.export.regressor`: targets (one or
    several outputs) are standardised on the training rows inside the model,
    the loss is their squared error, and early stopping watches the
    validation loss. `predict` returns targets in their own units.
    """

    _TASK = "regression"

    def fit(self, X, y):
        """Pretrain and fine-tune on rows X with real targets y, (n,) or (n, n_outputs)."""
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=_FLOATS, multi_output=True, y_numeric=True)
        y = np.asarray(y, dtype=np.float32)
        self._single_output = y.ndim == 1
        n_outputs = 1 if y.ndim == 1 else y.shape[1]
        return self._fit_supervised(X, y, n_outputs)

    def predict(self, X):
        predictions = self._outputs(X)
        return predictions.ravel() if self._single_output else predictions

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


__all__ = ["SdAClassifier", "SdARegressor", "StackedDenoisingAutoencoder"]
