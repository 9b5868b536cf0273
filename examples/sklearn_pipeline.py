"""stackae in scikit-learn: a grid search over an SdA classifier next to BernoulliRBM + logistic.

    python examples/sklearn_pipeline.py [--cv 3]

On scikit-learn's 8x8 digits (1,797 images, shipped with scikit-learn), 70%
to search and train, 30% held out. Two pipelines, each searched over two
hidden-layer sizes with GridSearchCV:

- stackae: `SdAClassifier` alone (it standardises the pixels itself),
  searched over the layer size and the masking corruption;
- scikit-learn's own recipe: pixels to [0, 1], a `BernoulliRBM` feature
  extractor and a `LogisticRegression`, searched over the number of
  components and the RBM's learning rate (it has no corruption).

Prints each search's best parameters, cross-validated accuracy, held-out
accuracy and wall time, whichever wins.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from sklearn.datasets import load_digits  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV, train_test_split  # noqa: E402
from sklearn.neural_network import BernoulliRBM  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import MinMaxScaler  # noqa: E402

from stackae.sklearn import SdAClassifier  # noqa: E402

SEED = 0
SIZES = (64, 128)


def searches():
    """(name, pipeline, grid) of the two searches."""
    sda = Pipeline([("sda", SdAClassifier(random_state=SEED))])
    sda_grid = {"sda__layers": [(n,) for n in SIZES], "sda__corruption": [0.0, 0.2]}
    rbm = Pipeline(
        [
            ("scale", MinMaxScaler()),
            ("rbm", BernoulliRBM(n_iter=10, random_state=SEED)),
            ("logistic", LogisticRegression(max_iter=1000)),
        ]
    )
    rbm_grid = {"rbm__n_components": list(SIZES), "rbm__learning_rate": [0.01, 0.06]}
    return [("SdAClassifier", sda, sda_grid), ("BernoulliRBM + logistic", rbm, rbm_grid)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cv", type=int, default=3, help="cross-validation folds")
    args = parser.parse_args()
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.3, stratify=digits.target, random_state=SEED
    )
    print(f"digits: {len(x_train)} rows to search and train, {len(x_test)} held out")
    for name, pipeline, grid in searches():
        start = time.perf_counter()
        search = GridSearchCV(pipeline, grid, cv=args.cv).fit(x_train, y_train)
        seconds = time.perf_counter() - start
        best = ", ".join(f"{k.split('__')[1]}={v}" for k, v in sorted(search.best_params_.items()))
        print(
            f"{name}: best {best}; cv accuracy {search.best_score_:.3f}; "
            f"held-out accuracy {search.score(x_test, y_test):.3f}; {seconds:.0f} s"
        )


if __name__ == "__main__":
    main()
