"""Linear probe of an embedding cache: logistic regression trained on some folds and
tested on others (default: train folds 1+2, test fold 3), on standardised embeddings.

    python tools/probe.py cache/us8k16k.mn04-v1.npz [--train 1 2] [--test 3]

Prints accuracy and weighted F1 on the test folds and the sizes it used. Needs
scikit-learn (installed with librosa).
"""
import argparse
import json

import numpy as np


def probe(path, train_folds=(1, 2), test_folds=(3,), c=1.0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    z = np.load(path, allow_pickle=False)
    X, y, fold = z["embedding"], z["label"], z["fold"]
    tr, te = np.isin(fold, train_folds), np.isin(fold, test_folds)
    mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-6
    clf = LogisticRegression(C=c, max_iter=2000)
    clf.fit((X[tr] - mu) / sd, y[tr])
    pred = clf.predict((X[te] - mu) / sd)
    return {"cache": str(path), "train_folds": list(train_folds), "test_folds": list(test_folds),
            "n_train": int(tr.sum()), "n_test": int(te.sum()), "accuracy": round(float(accuracy_score(y[te], pred)), 4),
            "weighted_f1": round(float(f1_score(y[te], pred, average="weighted")), 4)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cache")
    ap.add_argument("--train", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--test", type=int, nargs="+", default=[3])
    ap.add_argument("-C", type=float, default=1.0)
    a = ap.parse_args()
    print(json.dumps(probe(a.cache, a.train, a.test, a.C)))
