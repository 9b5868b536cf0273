"""Anomaly detection with a denoising autoencoder: fit on normal rows, flag the worst rebuilt.

    python examples/anomaly.py

scikit-learn's breast cancer table (shipped with scikit-learn): the benign rows
are the normal ones, 21 malignant rows are mixed in as the outliers to find
(ODDS's "wbc" layout). The detector is fitted on all the rows, unlabelled,
with `contamination=0.05`; the script prints how many rows it flags and how
many of them are malignant, the ROC-AUC of its scores, and for the row it
finds most anomalous the three features that were worst reconstructed.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from sklearn.datasets import load_breast_cancer  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from stackae.sklearn import StackedDenoisingAutoencoder  # noqa: E402


def main():
    data = load_breast_cancer(as_frame=True)
    x, y = data.data, data.target.to_numpy()
    rng = np.random.default_rng(0)
    rows = np.concatenate(
        [np.flatnonzero(y == 1), rng.choice(np.flatnonzero(y == 0), 21, replace=False)]
    )
    x, malignant = x.iloc[rows], y[rows] == 0

    detector = StackedDenoisingAutoencoder(
        (32,), epochs=30, corruption=0.2, contamination=0.05, random_state=0
    )
    flagged = detector.fit_predict(x) == -1  # -1: outlier, +1: inlier
    print(
        f"{len(x)} rows, {malignant.sum()} malignant; flagged {flagged.sum()}, "
        f"of which {np.count_nonzero(flagged & malignant)} malignant"
    )
    scores = detector.score_samples(x)  # minus the reconstruction error: lower is stranger
    print(f"ROC-AUC of the scores: {roc_auc_score(malignant, -scores):.3f}")

    worst = int(np.argmin(scores))
    errors = detector.per_feature_errors(x.iloc[[worst]])[0]
    top = np.argsort(errors)[::-1][:3]
    names = ", ".join(f"{detector.feature_names_in_[j]} ({errors[j]:.2f})" for j in top)
    kind = "malignant" if malignant[worst] else "benign"
    print(f"most anomalous row ({kind}): worst rebuilt features {names}")


if __name__ == "__main__":
    main()
