"""Run in a fresh process by test_distribute.py: 2 logical CPUs, MirroredStrategy vs one device."""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

import stackae  # noqa: E402
from stackae import export  # noqa: E402
from stackae.config import FinetuneSpec  # noqa: E402
from stackae.data import training_dataset  # noqa: E402
from stackae.finetuning import finetune  # noqa: E402
from stackae.stack import Stack, layer_specs  # noqa: E402

rng = np.random.default_rng(0)
x = rng.random((400, 30)).astype("float32")
y = rng.integers(0, 3, 400)


def pretrain_one_epoch(strategy):
    with strategy.scope():
        keras.utils.set_random_seed(3)
        model = stackae.AutoEncoder(8, corruption=0.3, seed=5)
        # The same (non-XLA) noise generator on both sides: XLA draws from another one.
        model.compile(jit_compile=False)
        data, order = training_dataset(x, 40, seed=1)
        history = model.fit(data, epochs=1, callbacks=[order], verbose=0, shuffle=False)
    return history.history["loss"][0], [np.asarray(w) for w in model.weights]


def finetune_one_epoch(strategy):
    with strategy.scope():
        keras.utils.set_random_seed(3)
        stack = Stack(layer_specs((8, 6)), seed=4)
        stack.build((None, 30))
        model = export.classifier(stack, 3, zero_init=False)
        history = finetune(model, (x, y), spec=FinetuneSpec(epochs=1, batch_size=40), verbose=0)
    return history.history["loss"][0], [np.asarray(w) for w in model.weights]


def difference(a, b):
    return max(float(np.abs(p - q).max()) for p, q in zip(a[1], b[1]))


mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
one = tf.distribute.get_strategy()
result = {"replicas": mirrored.num_replicas_in_sync}
for name, fn in (("pretrain", pretrain_one_epoch), ("finetune", finetune_one_epoch)):
    a, b = fn(one), fn(mirrored)
    result[name] = {"loss": [a[0], b[0]], "max_weight_difference": difference(a, b)}
json.dump(result, sys.stdout)
