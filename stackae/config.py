"""Defaults and per-layer settings, in one place; imports no TensorFlow (the CLI reads it)."""

import dataclasses

DEFAULT_SEED = 123


def make_optimizer(name, learning_rate, momentum=0.0):
    import keras

    config = {"learning_rate": learning_rate}
    if momentum:
        if name.lower() != "sgd":
            raise ValueError(f"momentum is an SGD setting; the optimizer is {name!r}")
        config["momentum"] = momentum
    return keras.optimizers.get({"class_name": name, "config": config})


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
    momentum: float = 0.0
    lr_decay: float = 1.0  # the learning rate of epoch e is learning_rate * lr_decay**e
    dropout: float = 0.0  # after each hidden layer, during fine-tuning only
    input_dropout: float = 0.0  # on the input, likewise

    def make_optimizer(self):
        return make_optimizer(self.optimizer, self.learning_rate, self.momentum)


FINETUNE_DEFAULTS = FinetuneSpec()
