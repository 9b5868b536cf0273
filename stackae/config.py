"""Defaults and per-layer settings, in one place; imports no TensorFlow (the CLI reads it)."""

import dataclasses

DEFAULT_SEED = 123


def make_optimizer(name, learning_rate):
    import keras

    return keras.optimizers.get({"class_name": name, "config": {"learning_rate": learning_rate}})


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """How one layer of a stack is pretrained; the defaults are the dA tutorial's."""

    units: int = 500
    corruption: float = 0.0
    noise: str = "masking"
    loss: str = "cross-entropy"
    epochs: int = 15
    batch_size: int = 20
    learning_rate: float = 0.1
    optimizer: str = "sgd"
    l2: float = 0.0
    sparsity: float = 0.0
    sparsity_target: float = 0.05
    contraction: float = 0.0

    def make_optimizer(self):
        return make_optimizer(self.optimizer, self.learning_rate)

    def autoencoder(self, layer, seed):
        from stackae.autoencoder import AutoEncoder

        return AutoEncoder(
            layer,
            noise=self.noise,
            corruption=self.corruption,
            loss=self.loss,
            l2=self.l2,
            sparsity=self.sparsity,
            sparsity_target=self.sparsity_target,
            contraction=self.contraction,
            seed=seed,
        )


DEFAULTS = LayerSpec()


@dataclasses.dataclass(frozen=True)
class FinetuneSpec:
    """Fine-tuning settings; lr 0.1 with SGD as the SdA tutorial, minibatches for speed."""

    epochs: int = 100
    batch_size: int = 20
    learning_rate: float = 0.1
    optimizer: str = "sgd"
    patience: int = 10

    def make_optimizer(self):
        return make_optimizer(self.optimizer, self.learning_rate)


FINETUNE_DEFAULTS = FinetuneSpec()
