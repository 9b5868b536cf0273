"""stackae.reuse: fits of one structure share traced programs; each ends as its own fit would."""

import keras
import numpy as np
import pytest
from numpy.testing import assert_array_equal

import stackae
from stackae import export, reuse
from stackae.config import FinetuneSpec, layer_specs
from stackae.finetuning import finetune

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="reuse is for TensorFlow's traced programs"
)


def rows(seed, n=90, width=7):
    return np.random.default_rng(seed).random((n, width)).astype(np.float32)


def pretrained(x, seed=3, sizes=(6, 5)):
    keras.utils.set_random_seed(seed)  # the initial weights
    stack = stackae.Stack(layer_specs(sizes, epochs=3, batch_size=16, corruption=0.2), seed=seed)
    histories = stackae.pretrain(stack, x, verbose=0, jit_compile=False)
    return stack, [h.history for h in histories]


def weights(model):
    return [np.array(w) for w in model.get_weights()]


def assert_same(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert_array_equal(u, v)


@pytest.fixture(autouse=True)
def empty_pool():
    reuse.clear()
    reuse.counts.clear()
    yield
    reuse.clear()


def test_pretraining_through_twins_gives_each_fit_its_own_results_and_keeps_earlier_ones():
    x1, x2 = rows(0), rows(1)
    alone1, history1 = pretrained(x1)
    alone2, history2 = pretrained(x2)
    with reuse.reusing():
        first, first_history = pretrained(x1)
        assert reuse.counts == {"made": 2}  # one twin per layer: (7 -> 6) and (6 -> 5)
        second, second_history = pretrained(x2)
    assert reuse.counts == {"made": 2, "reused": 2}
    assert_same(weights(first), weights(alone1))
    assert first_history == history1
    assert_same(weights(second), weights(alone2))
    assert second_history == history2
    # The twins trained the second stack: the first one's weights are still its own.
    assert_same(weights(first), weights(alone1))
    assert not any(np.array_equal(a, b) for a, b in zip(weights(first), weights(second)))


def test_fine_tuning_with_dropout_momentum_and_early_stopping_through_a_twin_is_the_same_run():
    x, labels = rows(2, n=120), np.arange(120) % 3
    spec = FinetuneSpec(epochs=6, batch_size=16, momentum=0.9, dropout=0.3, patience=2)

    def tuned(y):
        stack, _ = pretrained(x, sizes=(6,))
        model = export.classifier(stack, 3, dropout=spec.dropout)
        history = finetune(model, (x[:100], y[:100]), (x[100:], y[100:]), spec, seed=5, verbose=0)
        return model, history.history

    alone, alone_history = tuned(labels)
    other, other_history = tuned(labels[::-1].copy())
    with reuse.reusing():
        first, first_history = tuned(labels)
        second, second_history = tuned(labels[::-1].copy())
    assert reuse.counts == {"made": 2, "reused": 2}  # the autoencoder's twin and the Finetuner's
    assert first_history == alone_history and second_history == other_history
    assert_same(weights(first), weights(alone))
    assert_same(weights(second), weights(other))
    assert "val_accuracy" in first_history


def test_another_structure_or_optimizer_gets_its_own_twin():
    x = rows(4)
    with reuse.reusing():
        pretrained(x, sizes=(6,))
        pretrained(x, sizes=(5,))
        stack = stackae.Stack(layer_specs((6,), epochs=3, batch_size=16, corruption=0.2), seed=3)
        stackae.pretrain(stack, x, verbose=0, jit_compile=False)  # the same: reused
        other = stackae.Stack(layer_specs((6,), epochs=3, batch_size=16, corruption=0.3), seed=3)
        stackae.pretrain(other, x, verbose=0, jit_compile=False)  # other noise: a new twin
    assert reuse.counts == {"made": 3, "reused": 1}


def test_a_fit_that_raises_leaves_its_twin_out_of_the_pool():
    x = rows(5)

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    with reuse.reusing():
        stack = stackae.Stack(layer_specs((6,), epochs=3, batch_size=16), seed=3)
        with pytest.raises(KeyboardInterrupt):
            stackae.pretrain(stack, x, verbose=0, jit_compile=False, callbacks=lambda k: [Stop()])
        # The stack holds what its fit reached (one epoch), as a fit of its own would.
        assert np.all(np.isfinite(np.concatenate([w.ravel() for w in weights(stack)])))
        pretrained(x, sizes=(6,))
    assert reuse.counts == {"made": 2}


def test_a_model_its_config_cannot_make_again_trains_itself(monkeypatch):
    x = rows(7)
    alone, history = pretrained(x, sizes=(6,))

    def refuse(model):
        raise ValueError("no twin")

    monkeypatch.setattr(reuse, "_make_twin", refuse)
    with reuse.reusing():
        stack, got = pretrained(x, sizes=(6,))
    assert not reuse.counts and not reuse._pool
    assert got == history
    assert_same(weights(stack), weights(alone))


def test_outside_reusing_no_twin_is_made():
    pretrained(rows(6), sizes=(6,))
    assert not reuse.counts
    assert not reuse._pool


def test_the_estimators_reuse_programs_and_each_keeps_its_own_model():
    from sklearn.datasets import load_wine

    from stackae.sklearn import SdAClassifier

    x, y = load_wine(return_X_y=True)
    settings = {"epochs": 2, "finetune_epochs": 4, "random_state": 0}
    first = SdAClassifier(**settings).fit(x, y)
    before = first.predict_proba(x)
    again = SdAClassifier(**settings).fit(x, y)
    assert reuse.counts == {"made": 2, "reused": 2}
    assert again.history_ == first.history_
    assert_array_equal(again.predict_proba(x), before)
    SdAClassifier(**settings).fit(x[::-1], y[::-1])  # other rows, the same structure
    assert reuse.counts["reused"] == 4
    assert_array_equal(first.predict_proba(x), before)
