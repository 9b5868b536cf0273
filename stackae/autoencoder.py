"""AutoEncoder: a keras.Model that trains one TiedAutoEncoderLayer as a denoising autoencoder."""

import keras
import numpy as np
from keras import ops

# Modules, not names: any of these may be the first import, and Keras's import then
# registers this module while that one is half-imported (stackae/__init__.py).
from stackae import compat, losses, trainers
from stackae import noise as noises
from stackae.config import LAYER_FIELDS, check_noise
from stackae.errors import ParameterError
from stackae.kinds import kind_of
from stackae.layers import TiedAutoEncoderLayer

# The fast path is the default: one XLA program per step, many steps per call
# (per-step Python overhead dominates at the tutorial's batch of 20). Keras's
# torch trainer runs one step per call: there the grouped batches do this job.
DEFAULT_STEPS_PER_EXECUTION = 64
# Batches per step when pretraining (data.training_dataset's `group`): each
# step runs this many updates in one compiled loop (benchmarks/README.md).
DEFAULT_GROUP = 16


@keras.saving.register_keras_serializable(package="stackae")
class AutoEncoder(trainers.Steps, keras.Model):
    """Denoising autoencoder around one tied-weight layer.

    `fit(x)` trains it on unlabelled rows of `x` (values in [0, 1] for the
    cross-entropy): the input is corrupted, encoded, decoded with the tied
    kernel and compared with the clean input. `loss` in the logs is the
    reconstruction cost summed over features and averaged over examples, the
    tutorial's units; `penalty` (when any penalty is set) is the rest of the
    minimised objective. Calling the model returns the reconstruction.

    The layer may be of any registered kind (`stackae.kinds`): with a
    `TiedConv2DAutoEncoderLayer` the examples are images (height, width,
    channels), the noise is drawn per value, and the cost sums over every
    value of an example (pixels and channels).

    Args:
        layer: a `TiedAutoEncoderLayer`, or an int: the number of hidden units;
            or the tied layer of another kind.
        noise: "masking", "gaussian" or "salt-and-pepper".
        corruption: masking / salt-and-pepper probability, or Gaussian stddev.
        loss: "cross-entropy" or "squared-error".
        l2: weight of the L2 weight decay sum(W^2).
        sparsity: weight beta of the KL sparsity penalty.
        sparsity_target: target mean activation rho.
        contraction: weight lambda of the contractive penalty.
        seed: integer seed of the corruption noise; noise at step t depends
            only on (seed, t), so a resumed run sees the same noise.
    """

    def __init__(
        self,
        layer,
        noise="masking",
        corruption=0.0,
        loss="cross-entropy",
        l2=0.0,
        sparsity=0.0,
        sparsity_target=0.05,
        contraction=0.0,
        seed=None,
        **kwargs,
    ):
        compat.check_backend()
        super().__init__(**kwargs)
        if isinstance(layer, int) and not isinstance(layer, bool):
            layer = TiedAutoEncoderLayer(layer)
        try:
            self.kind = kind_of(layer)
        except ValueError:
            raise ValueError(
                "`layer` must be a TiedAutoEncoderLayer, a positive int or the tied layer of "
                f"a registered kind (stackae.kinds). Received: layer={layer!r}"
            ) from None
        # The spec's rules, checked where the spec checks them (stackae.config).
        check_noise(noise, corruption)
        settings = {"loss": loss, "l2": l2, "sparsity": sparsity, "contraction": contraction}
        settings["sparsity_target"] = sparsity_target
        for name, value in settings.items():
            LAYER_FIELDS[name].check(value)
        decoder_activation = getattr(layer, "decoder_activation", None)
        if loss == "cross-entropy" and decoder_activation is not keras.activations.sigmoid:
            raise ParameterError(
                "The cross-entropy loss needs a sigmoid decoder. "
                "Use loss='squared-error' or decoder_activation='sigmoid'."
            )
        if contraction and self.kind.name != "dense":
            raise ParameterError(
                "The contractive penalty is written for dense layers. "
                f"Received: contraction={contraction!r} for a {self.kind.name} layer",
                param="contraction",
            )
        self.layer = layer
        self.noise = noise
        self.corruption = float(corruption)
        self.loss_name = loss
        self.l2 = float(l2)
        self.sparsity = float(sparsity)
        self.sparsity_target = float(sparsity_target)
        self.contraction = float(contraction)
        if seed is None:
            seed = int(keras.random.randint((), 0, 2**31 - 1, seed=None))
        self.seed = int(seed)
        metric_dtype = self.dtype_policy.variable_dtype
        self.loss_tracker = keras.metrics.Mean(name="loss", dtype=metric_dtype)
        self.penalty_tracker = keras.metrics.Mean(name="penalty", dtype=metric_dtype)

    @property
    def has_penalty(self):
        # The layer's regularizers, not layer.losses: that reads the variables,
        # which Keras's JAX trainer detaches from the model during fit.
        layer = self.layer
        regularized = any(
            getattr(layer, name, None)
            for name in ("kernel_regularizer", "bias_regularizer", "decoder_bias_regularizer")
        )
        return bool(self.l2 or self.sparsity or self.contraction or regularized)

    @property
    def metrics(self):
        trackers = [self.loss_tracker]
        if self.has_penalty:
            trackers.append(self.penalty_tracker)
        return trackers

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)

    def call(self, inputs):
        return self.layer(self.layer(inputs), reverse=True)

    def encode(self, x):
        return self.layer.encode(x)

    def compile(self, optimizer=None, jit_compile=None, steps_per_execution=None, **kwargs):
        """Like `keras.Model.compile`, defaulting to the tutorial's SGD(0.1) and to XLA.

        `jit_compile` and `steps_per_execution` default to XLA with many steps
        per call, except where tf.distribute cannot take them (stackae/compat.py says why).
        """
        chosen = compat.compile_defaults(
            DEFAULT_STEPS_PER_EXECUTION,
            model=self,
            optimizer=optimizer,
            jit_compile=jit_compile,
            steps_per_execution=steps_per_execution,
        )
        self._requested_steps_per_execution = chosen["steps_per_execution"]
        super().compile(**chosen, **kwargs)

    def compile_from_config(self, config):
        compat.compile_from_config(self, config)

    def costs(self, x, corrupted):
        """(reconstruction cost, penalty) of a batch, as scalars of the variable dtype.

        Under mixed precision the matmuls run in float16 and the costs in float32.
        """
        dtype = self.layer.variable_dtype
        # (batch, n_hidden) and (batch, n_visible) for the dense kind; builds the layer.
        h, logits = self.kind.autoencode(self.layer, corrupted)
        logits = ops.cast(logits, dtype)
        x = ops.cast(x, dtype)
        if len(x.shape) > 2:  # images: the cost sums over every value of an example
            x = ops.reshape(x, (-1, int(np.prod(x.shape[1:]))))
            logits = ops.reshape(logits, (-1, int(np.prod(logits.shape[1:]))))
        if self.loss_name == "cross-entropy":
            per_example = losses.cross_entropy(x, logits)
        else:
            per_example = losses.squared_error(x, self.layer.decoder_activation(logits))
        cost = compat.mean(per_example)
        penalty = ops.zeros((), dtype)
        kernels = [ops.cast(kernel, dtype) for kernel in self.kind.kernels(self.layer)]
        kernel = kernels[0] if kernels else None
        h = ops.cast(h, dtype)
        for weights in kernels if self.l2 else ():
            penalty += self.l2 * losses.weight_decay(weights)
        if self.sparsity:
            penalty += self.sparsity * losses.kl_sparsity(h, self.sparsity_target)
        if self.contraction:
            penalty += self.contraction * losses.contraction(h, kernel)
        for extra in self.layer.losses:
            penalty += ops.cast(extra, dtype)
        return cost, penalty

    def _noise_seed(self, step):
        """Stateless seed of the noise of optimizer step `step`: (seed, step)."""
        # int64 as TensorFlow's stateless ops take it; JAX has no int64 unless x64 is enabled.
        dtype = "int32" if keras.backend.backend() == "jax" else "int64"
        return ops.stack([ops.convert_to_tensor(self.seed, dtype), ops.cast(step, dtype)])

    # ------------------------------------------------ the hooks of stackae.trainers

    def _batch(self, data):
        """(x,): the rows of a data element, whose labels (if any) are ignored."""
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        x = ops.convert_to_tensor(x, self.compute_dtype)
        if not self.built:
            # fit() without a strategy scope builds nothing before tracing the step.
            self.build(x.shape)
        return (x,)

    def _rows(self, x):
        """A batch as rows (examples, features): a (batch, time, features) batch is its
        batch * time rows, so it trains and costs exactly as those rows flattened."""
        if len(x.shape) == 2 or self.kind.input_rank > 1:
            return x
        return ops.reshape(x, (-1, x.shape[-1]))

    def _objective(self, batch, step, part, jit):
        x = self._rows(batch[0])
        corrupted = noises.corrupt(
            x, self.noise, self.corruption, self._noise_seed(step), jit, part
        )
        cost, penalty = self.costs(x, corrupted)
        return cost + penalty, (x, cost, penalty)

    def _evaluation(self, batch):
        x = self._rows(batch[0])
        cost, penalty = self.costs(x, x)
        return x, cost, penalty

    def _track(self, x, cost, penalty):
        batch = ops.shape(x)[0]
        self.loss_tracker.update_state(cost, sample_weight=batch)
        if self.has_penalty:
            self.penalty_tracker.update_state(penalty, sample_weight=batch)

    def _logs(self):
        return {m.name: compat.mean_result(m) for m in self.metrics}

    def get_config(self):
        base_config = super().get_config()
        config = {
            "layer": keras.saving.serialize_keras_object(self.layer),
            "noise": self.noise,
            "corruption": self.corruption,
            "loss": self.loss_name,
            "l2": self.l2,
            "sparsity": self.sparsity,
            "sparsity_target": self.sparsity_target,
            "contraction": self.contraction,
            "seed": self.seed,
        }
        return {**base_config, **config}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        return cls(**config)
