"""Does pretraining help, and where? A pretrained tied-conv CNN against the same CNN from
Keras's default initialisation and against the dense SdA, with few and with more labels.

For each data set (MNIST, Fashion-MNIST) and seed: the conv stack and the dense
stack are pretrained greedily on all 60,000 training images, without labels
(`stackae.pretrain`). A validation set (stratified, seeded) and labelled
training subsets (stratified, seeded, nested: the 1,000 are among the
10,000) are drawn from the other training images; the rest of the labels
are unused. Each of three models is exported and fine-tuned with the same
`stackae.finetune` settings on the same labels, stopped early on the
validation set, and scored on the 10,000 test images:

- "pretrained CNN": `stackae.export.classifier(conv_stack, 10)`;
- "random CNN": the same exported model re-made by `keras.models.clone_model`,
  so every layer takes its Keras default initialisation (Glorot uniform,
  zero biases; the softmax starts at zero in both, as the exporter makes it);
- "dense SdA": `stackae.export.classifier(dense_stack, 10)` on the flat pixels;
- "random ReLU CNN" (only with `--models relu`): the random CNN with ReLU in
  place of every sigmoid (the softmax kept), the conventional way to train a
  CNN from scratch: a baseline that does not share the sigmoid's slow start.

    python benchmarks/conv_pretraining.py                # about an hour on 2 shared cores
    python benchmarks/conv_pretraining.py --quick        # a smoke run, under a minute
    python benchmarks/conv_pretraining.py --datasets fashion --seeds 0 --labels 1000

A line is printed as each (data set, seed, labels, model) finishes, so a
partial log is useful; the summary table (mean, standard deviation, min-max
over seeds) comes at the end.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import stackae  # noqa: E402
from stackae import export  # noqa: E402
from stackae.data import load  # noqa: E402
from stackae.finetuning import error_rate, make_finetuner  # noqa: E402

IMAGE = (28, 28, 1)
N_CLASSES = 10
MODELS = ("pretrained CNN", "random CNN", "dense SdA", "random ReLU CNN")
MODEL_NAMES = {
    "pretrained": "pretrained CNN",
    "random": "random CNN",
    "sda": "dense SdA",
    "relu": "random ReLU CNN",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--mnist",
        default="mnist",
        help="MNIST: a source name (mnist: $STACKAE_MNIST, Keras's cache or a download) or a path.",
    )
    p.add_argument(
        "--fashion", default="fashion-mnist", help="Fashion-MNIST: a source name or an IDX folder."
    )
    p.add_argument("--datasets", default="mnist,fashion", help="Comma list of mnist, fashion.")
    p.add_argument("--seeds", default="0,1,2", help="Comma list of seeds.")
    p.add_argument("--labels", default="1000,10000", help="Comma list of labelled image counts.")
    p.add_argument("--valid", type=int, default=1000, help="Validation images (labelled).")
    p.add_argument("--conv", default="conv8x5,pool2,conv16x5,pool2,500", help="CNN --layers.")
    p.add_argument("--dense", default="500,500", help="The dense SdA's --layers.")
    p.add_argument(
        "--activation",
        default=None,
        help="The CNN's layers' activation (stackae's default: sigmoid), e.g. relu; its "
        "decoders keep theirs. The dense SdA keeps sigmoid.",
    )
    p.add_argument("--corruption", type=float, default=0.2, help="Masking noise, every layer.")
    p.add_argument("--conv-epochs", default="1,1,2", help="Pretraining epochs per CNN layer.")
    p.add_argument("--dense-epochs", default="3,3", help="Pretraining epochs per SdA layer.")
    p.add_argument(
        "--finetune-epochs",
        default="1000:100,10000:15",
        help="Most fine-tuning epochs per label count, LABELS:EPOCHS,...",
    )
    p.add_argument("--patience", type=int, default=10, help="Early-stopping patience (epochs).")
    p.add_argument("--lr", type=float, default=0.1, help="Fine-tuning SGD learning rate.")
    p.add_argument("--momentum", type=float, default=0.0, help="Fine-tuning SGD momentum.")
    p.add_argument(
        "--xla",
        action="store_true",
        help="Ask for XLA for the CNNs too; stackae's default leaves it off for convolutions "
        "on CPUs: XLA's CPU convolutions were 2-8x slower (README, conv_speed.py). "
        "The SdA keeps XLA.",
    )
    p.add_argument(
        "--models",
        default="pretrained,random,sda",
        help="Comma list of pretrained, random, sda, relu (a stack no model needs is not "
        "pretrained).",
    )
    p.add_argument("--quick", action="store_true", help="A smoke run on a few hundred images.")
    args = p.parse_args(argv)
    if args.quick:
        args.datasets, args.seeds, args.labels, args.valid = "mnist", "0", "100,300", 100
        args.conv, args.dense = "conv4x5,pool2,conv8x5,pool2,50", "50"
        args.conv_epochs, args.dense_epochs, args.finetune_epochs = "1", "1", "100:3,300:3"
    args.datasets = args.datasets.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.labels = [int(n) for n in args.labels.split(",")]
    args.models = [MODEL_NAMES[m] for m in args.models.split(",")]
    args.max_epochs = dict(
        (int(a), int(b)) for a, b in (item.split(":") for item in args.finetune_epochs.split(","))
    )
    return args


def epochs_list(text):
    values = [int(e) for e in text.split(",")]
    return values[0] if len(values) == 1 else values


# ---------------------------------------------------------------- data


def load_set(name, args):
    """(x_train, y_train, x_test, y_test), x as flat float32 rows in [0, 1]."""
    source = {"mnist": args.mnist, "fashion": args.fashion}[name]
    data = load(source, valid_size=0)
    x, y, xt, yt = data.train.x, data.train.y, data.test.x, data.test.y
    if args.quick:  # a few hundred images, every class
        x, y, xt, yt = x[:600], y[:600], xt[:500], yt[:500]
    return np.asarray(x), np.asarray(y), np.asarray(xt), np.asarray(yt)


def draw_split(y, seed, n_valid, label_counts):
    """Stratified, seeded: validation indices and nested labelled subsets, all disjoint from
    the validation set (each class gets count // n_classes rows)."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in range(N_CLASSES)]
    v = n_valid // N_CLASSES
    valid = np.sort(np.concatenate([idx[:v] for idx in per_class]))
    labelled = {
        n: np.sort(np.concatenate([idx[v : v + n // N_CLASSES] for idx in per_class]))
        for n in label_counts
    }
    return valid, labelled


# ---------------------------------------------------------------- models


def pretrain_stack(layers, x, args, epochs, seed, jit_compile, train=True, activation=None):
    """A stack pretrained greedily on `x` (all training images, no labels); seconds taken.
    With `train=False` the stack is only built (its architecture, for the random CNN)."""
    keras.utils.set_random_seed(seed)  # the initial weights
    specs = stackae.layer_specs(
        layers, corruption=args.corruption, epochs=epochs, activation=activation
    )
    stack = stackae.Stack(specs, seed=seed)
    start = time.perf_counter()
    if not train:
        stack.build((None, *x.shape[1:]))
        return stack, 0.0
    stackae.pretrain(stack, x, verbose=0, jit_compile=jit_compile)
    return stack, time.perf_counter() - start


def fine_tune(model, train, valid, test, n_labels, args, seed, jit_compile):
    """Fine-tune `model` in place; (test error %, valid error %, epochs run, seconds)."""
    spec = stackae.FinetuneSpec(
        epochs=args.max_epochs[n_labels],
        patience=args.patience,
        learning_rate=args.lr,
        momentum=args.momentum,
    )
    finetuner = make_finetuner(model, spec, seed=seed, jit_compile=jit_compile)
    start = time.perf_counter()
    history = stackae.finetune(model, train, valid, spec, verbose=0, seed=seed, finetuner=finetuner)
    seconds = time.perf_counter() - start
    return (
        100 * error_rate(model, *test),
        100 * error_rate(model, *valid),
        len(history.epoch),
        seconds,
    )


def random_init(model, seed):
    """The same architecture with every layer's Keras default initialisation."""
    keras.utils.set_random_seed(seed)
    return keras.models.clone_model(model)


def relu_init(model, seed):
    """The same architecture with ReLU for every sigmoid, every layer's Keras default
    initialisation."""

    def relu(layer):
        config = layer.get_config()
        if config.get("activation") == "sigmoid":
            config["activation"] = "relu"
        return layer.__class__.from_config(config)

    keras.utils.set_random_seed(seed)
    return keras.models.clone_model(model, clone_function=relu)


# ---------------------------------------------------------------- the benchmark


def run(args):
    results = []  # dicts, one per (dataset, seed, labels, model)
    conv_epochs, dense_epochs = epochs_list(args.conv_epochs), epochs_list(args.dense_epochs)
    cnn_jit = True if args.xla else None
    print(
        f"# conv stack {args.conv} (epochs {args.conv_epochs}, activation "
        f"{args.activation or 'sigmoid'}), dense SdA {args.dense} "
        f"(epochs {args.dense_epochs}), masking {args.corruption}; fine-tuning SGD lr {args.lr} "
        f"momentum {args.momentum}, batch 20, at most {args.finetune_epochs} epochs, "
        f"patience {args.patience}, {args.valid} validation images; "
        f"XLA for the CNNs {'on' if args.xla else 'off'}, for the SdA on"
    )
    print("dataset  seed labels model            test %  valid %  epochs  seconds", flush=True)
    for name in args.datasets:
        x, y, x_test, y_test = load_set(name, args)
        images, test_images = x.reshape(-1, *IMAGE), x_test.reshape(-1, *IMAGE)
        for seed in args.seeds:
            conv_stack, conv_s = pretrain_stack(
                args.conv,
                images,
                args,
                conv_epochs,
                seed,
                cnn_jit,
                MODELS[0] in args.models,
                args.activation,
            )
            dense_stack, dense_s = pretrain_stack(
                args.dense, x, args, dense_epochs, seed, None, MODELS[2] in args.models
            )
            print(
                f"# {name} seed {seed}: pretraining on {len(x)} images: conv stack {conv_s:.0f} s, "
                f"dense SdA {dense_s:.0f} s",
                flush=True,
            )
            valid, labelled = draw_split(y, seed, args.valid, args.labels)
            for n in args.labels:
                rows = labelled[n]
                for model_name in args.models:
                    jit = cnn_jit
                    if model_name == "dense SdA":
                        model, xs, xts = export.classifier(dense_stack, N_CLASSES), x, x_test
                        jit = None  # stackae's default, XLA
                    else:
                        model = export.classifier(conv_stack, N_CLASSES)
                        xs, xts = images, test_images
                        if model_name == "random CNN":
                            model = random_init(model, seed)
                        elif model_name == "random ReLU CNN":
                            model = relu_init(model, seed)
                    test_err, valid_err, epochs, seconds = fine_tune(
                        model,
                        (xs[rows], y[rows]),
                        (xs[valid], y[valid]),
                        (xts, y_test),
                        n,
                        args,
                        seed,
                        jit,
                    )
                    results.append(
                        dict(dataset=name, seed=seed, labels=n, model=model_name, test=test_err)
                    )
                    print(
                        f"{name:8} {seed:4} {n:6} {model_name:16} {test_err:6.2f}  {valid_err:7.2f}"
                        f"  {epochs:6}  {seconds:7.0f}",
                        flush=True,
                    )
    return results


def summary(results):
    lines = [
        "| data set | labels | model | test error %: mean | std | min-max | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = dict.fromkeys((r["dataset"], r["labels"], r["model"]) for r in results)
    for dataset, labels, model in keys:
        errs = [
            r["test"]
            for r in results
            if (r["dataset"], r["labels"], r["model"]) == (dataset, labels, model)
        ]
        std = statistics.stdev(errs) if len(errs) > 1 else 0.0
        lines.append(
            f"| {dataset} | {labels} | {model} | {statistics.mean(errs):.2f} | {std:.2f} "
            f"| {min(errs):.2f}-{max(errs):.2f} | {len(errs)} |"
        )
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    import tensorflow as tf

    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; stackae {stackae.__version__}, "
        f"Keras {keras.__version__}, TensorFlow {tf.__version__}, "
        f"backend {keras.backend.backend()}, {os.cpu_count()} CPUs"
    )
    start = time.perf_counter()
    results = run(args)
    print()
    print(summary(results))
    print(f"total {time.perf_counter() - start:.0f} s wall")


if __name__ == "__main__":
    main()
