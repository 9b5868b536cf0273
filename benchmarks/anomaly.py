"""Anomaly detection: stackae's detector against scikit-learn's and PyOD's on the same rows.

Tasks are built offline the way ODDS and ADBench build theirs: normal rows of
one kind plus a small sample of another kind as the outliers.

- cancer: scikit-learn's breast cancer, the 357 benign rows as inliers and 21
  malignant rows drawn at random (each seed its own draw) as outliers: 378 rows
  of 30 features, 5.6 % outliers, the layout of ODDS's "wbc".
- digits: scikit-learn's 8x8 digits, every row of one digit (seed k: digit k,
  about 180 rows) as inliers and 5 % as many rows of the other digits as
  outliers: about 190 rows of 64 features.
- synthetic: 1,000 rows near a 2-d curved surface in 8 features on scales
  1e-2 .. 1e2, 5 % of them replaced by rows drawn around the mean with 3 times
  the data's spread (tests/test_anomaly.py's set, larger).

Every detector is fitted on all the rows, unlabelled (outliers included, as
in ODDS's unsupervised protocol), and scores the same rows; ROC-AUC and
average precision are computed from the scores and the known labels, for 5
seeds (each seed draws the outliers and seeds the detectors). Detectors:
stackae's `StackedDenoisingAutoencoder` with the settings `docs/anomaly.md`
recommends (score: minus `score_samples`); `IsolationForest`;
`LocalOutlierFactor(novelty=True)` on standardised rows; PCA's reconstruction
error on standardised rows (components keeping 90 % of the variance); PyOD's
`AutoEncoder` with its defaults (`decision_function`: higher is more abnormal).
PyOD is a benchmark-only dependency: `pip install pyod tqdm` (it needs PyTorch).

    python benchmarks/anomaly.py                # every task, 5 seeds: a few minutes
    python benchmarks/anomaly.py --seeds 1 --only cancer
"""

import argparse
import os
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from sklearn import datasets  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.ensemble import IsolationForest  # noqa: E402
from sklearn.metrics import average_precision_score, roc_auc_score  # noqa: E402
from sklearn.neighbors import LocalOutlierFactor  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from stackae.sklearn import StackedDenoisingAutoencoder  # noqa: E402

# docs/anomaly.md's recommended settings for tables.
STACKAE = {"layers": (32,), "epochs": 30, "corruption": 0.2}


# ---------------------------------------------------------------- tasks


def cancer(seed):
    x, y = datasets.load_breast_cancer(return_X_y=True)
    rng = np.random.default_rng(seed)
    benign, malignant = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    rows = np.concatenate([benign, rng.choice(malignant, 21, replace=False)])
    return x[rows], (y[rows] == 0).astype(int)


def digits(seed):
    x, y = datasets.load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    inliers, others = np.flatnonzero(y == seed % 10), np.flatnonzero(y != seed % 10)
    n_out = round(0.05 * len(inliers))
    rows = np.concatenate([inliers, rng.choice(others, n_out, replace=False)])
    return x[rows], (y[rows] != seed % 10).astype(int)


def synthetic(seed, n=1000, width=8):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    x = np.tanh(z @ rng.normal(size=(2, width))) + 0.05 * rng.normal(size=(n, width))
    outlier = np.zeros(n, int)
    outlier[rng.choice(n, n // 20, replace=False)] = 1
    k = outlier.sum()
    x[outlier == 1] = x.mean(axis=0) + 3 * x.std(axis=0) * rng.normal(size=(k, width))
    return x * 10.0 ** (np.arange(width) % 5 - 2) + 50 * np.arange(width), outlier


TASKS = {"cancer": cancer, "digits": digits, "synthetic": synthetic}


# ---------------------------------------------------------------- detectors: higher = stranger


def stackae_scores(x, seed, **settings):
    model = StackedDenoisingAutoencoder(**{**STACKAE, **settings}, random_state=seed).fit(x)
    return -model.score_samples(x)


def isolation_forest(x, seed):
    return -IsolationForest(random_state=seed).fit(x).score_samples(x)


def local_outlier_factor(x, seed):
    model = make_pipeline(StandardScaler(), LocalOutlierFactor(novelty=True)).fit(x)
    return -model.score_samples(x)


def pca_error(x, seed):
    scaled = StandardScaler().fit_transform(x)
    pca = PCA(0.9, random_state=seed).fit(scaled)
    rebuilt = pca.inverse_transform(pca.transform(scaled))
    return np.mean((scaled - rebuilt) ** 2, axis=1)


def pyod_autoencoder(x, seed):
    from pyod.models.auto_encoder import AutoEncoder

    model = AutoEncoder(random_state=seed, verbose=0)
    model.fit(x)
    return model.decision_function(x)


DETECTORS = {
    "stackae": stackae_scores,
    "IsolationForest": isolation_forest,
    "LOF (novelty)": local_outlier_factor,
    "PCA error": pca_error,
    "PyOD AutoEncoder": pyod_autoencoder,
}
SKLEARN = ("IsolationForest", "LOF (novelty)", "PCA error")


# ---------------------------------------------------------------- the run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--only", help="comma list of tasks")
    args = parser.parse_args()
    tasks = args.only.split(",") if args.only else list(TASKS)
    warnings.filterwarnings("ignore", category=UserWarning)
    results = {}  # (task, detector) -> list of (auc, ap)
    seconds = {}
    for task in tasks:
        for seed in range(args.seeds):
            x, labels = TASKS[task](seed)
            for name, detect in DETECTORS.items():
                start = time.perf_counter()
                scores = detect(x, seed)
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
                found = (roc_auc_score(labels, scores), average_precision_score(labels, scores))
                results.setdefault((task, name), []).append(found)
        x, labels = TASKS[task](0)
        print(f"{task}: {len(x)} rows x {x.shape[1]} features, {labels.mean():.1%} outliers")
    print()
    print(f"{'task':<10} {'detector':<18} {'ROC-AUC':>15} {'avg precision':>15}")
    for task in tasks:
        for name in DETECTORS:
            found = np.array(results[(task, name)])
            auc, ap = found.mean(axis=0)
            auc_sd, ap_sd = found.std(axis=0)
            print(f"{task:<10} {name:<18} {auc:>8.3f} ± {auc_sd:.3f} {ap:>8.3f} ± {ap_sd:.3f}")
    print()
    mean_auc = {
        name: np.mean([np.mean(results[(t, name)], axis=0)[0] for t in tasks]) for name in DETECTORS
    }
    for name in DETECTORS:
        print(f"mean ROC-AUC over tasks {name:<18} {mean_auc[name]:.3f}  ({seconds[name]:.0f} s)")
    best = max(SKLEARN, key=mean_auc.get)
    gap = mean_auc["stackae"] - mean_auc[best]
    beats = all(
        np.mean(results[(t, "stackae")], axis=0)[0]
        >= np.mean(results[(t, "PyOD AutoEncoder")], axis=0)[0]
        for t in tasks
    )
    print(f"stackae >= PyOD AutoEncoder (ROC-AUC) on every task: {beats}")
    print(f"stackae - best scikit-learn detector ({best}), mean ROC-AUC: {gap:+.3f}")


if __name__ == "__main__":
    main()
