"""Classical baselines on exactly the classify stage's samples: TF-IDF + logistic regression, and the
linear probe (logistic regression on a frozen encoder's pooled features).

Both choose their regularisation C on the stage's validation hold-out (never on the test set)
from the same small grid, refit on the training sample with the chosen C, and report accuracy
on the same test sample the fine-tuned classifier is scored on. They are the bar a fine-tuned
classifier has to clear: the TF-IDF row says what a bag of n-grams does with the same labels;
the probe says how much class information the LM put into its features before fine-tuning
(a low probe with a good classifier: fine-tuning did the work; a good probe with a bad
classifier: fine-tuning failed).
"""
from __future__ import annotations

import time

import numpy as np

C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)  # inverse regularisation strengths tried on validation


def fit_tuned_logistic_regression(x_train, y_train, x_valid, y_valid, standardize: bool) -> tuple:
    """(the model refitted with the C of best validation accuracy (ties: the smaller C), its scores)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def model(c):
        lr = LogisticRegression(C=c, max_iter=2000)
        return make_pipeline(StandardScaler(), lr) if standardize else lr

    valid_acc = {}
    for c in C_GRID:
        valid_acc[c] = float(model(c).fit(x_train, y_train).score(x_valid, y_valid))
    best = max(C_GRID, key=lambda c: (valid_acc[c], -c))
    return model(best).fit(x_train, y_train), {"valid_accuracy": valid_acc[best], "C": best,
                                               "valid_accuracy_by_C": {str(c): a for c, a in valid_acc.items()}}


def tuned_logistic_regression(x_train, y_train, x_valid, y_valid, x_test, y_test, standardize: bool) -> dict:
    """Pick C on validation accuracy, then report test accuracy with that C."""
    fitted, scores = fit_tuned_logistic_regression(x_train, y_train, x_valid, y_valid, standardize)
    preds = fitted.predict(x_test)
    return {"test_accuracy": float(np.mean(preds == y_test)), **scores, "test_size": int(len(y_test))}


def tfidf_baseline(train_texts: list[str], y_train, valid_texts: list[str], y_valid, test_texts: list[str],
                   y_test) -> dict:
    """TF-IDF of word 1-2-grams (sublinear tf, fitted on the training sample) + logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    start = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, strip_accents="unicode")
    x_train = vectorizer.fit_transform(train_texts)
    scores = tuned_logistic_regression(x_train, y_train, vectorizer.transform(valid_texts), y_valid,
                                       vectorizer.transform(test_texts), y_test, standardize=False)
    return {**scores, "features": int(x_train.shape[1]), "seconds": time.perf_counter() - start}


def pooled_features(model, backbone, batches) -> tuple[np.ndarray, np.ndarray]:
    """The classifier's pooled features (its head's input) and labels, in evaluation mode, for every batch.

    `model` is a classifier whose encoder holds the LM's weights; the head is never used, so the
    features are exactly what fine-tuning starts from (the linear probe's input)."""
    import torch

    head, found = backbone.classifier_head(model), []
    hook = head.register_forward_pre_hook(lambda _module, inputs: found.append(inputs[0].detach().float().cpu()))
    features, labels = [], []
    model.eval()
    try:
        with torch.no_grad():
            for xb, yb in batches:
                if hasattr(model, "reset"):
                    model.reset()
                found.clear()
                model(xb)
                features.append(found[-1])
                labels.append(yb.cpu())
    finally:
        hook.remove()
    return torch.cat(features).numpy(), torch.cat(labels).numpy()


def linear_probe(model, backbone, train_batches, valid_batches, test_batches) -> dict:
    """Logistic regression on the frozen encoder's standardised pooled features, C chosen on validation."""
    start = time.perf_counter()
    x_train, y_train = pooled_features(model, backbone, train_batches)
    x_valid, y_valid = pooled_features(model, backbone, valid_batches)
    x_test, y_test = pooled_features(model, backbone, test_batches)
    scores = tuned_logistic_regression(x_train, y_train, x_valid, y_valid, x_test, y_test, standardize=True)
    return {**scores, "features": int(x_train.shape[1]), "seconds": time.perf_counter() - start}


def same_sample_baselines(model, backbone, splits, batches: dict) -> dict:
    """TF-IDF + LR on the splits' texts and the linear probe on `model`'s frozen pooled features
    (`batches`: split name -> loader of (ids, label) batches), as flat `tfidf_*` / `probe_*` metrics."""
    index = {c: i for i, c in enumerate(splits.classes)}
    labels = {s: getattr(splits, s)["label"].map(index).to_numpy() for s in ("train", "valid", "test")}
    texts = {s: getattr(splits, s)["text"].tolist() for s in ("train", "valid", "test")}
    tfidf = tfidf_baseline(texts["train"], labels["train"], texts["valid"], labels["valid"], texts["test"],
                           labels["test"])
    probe = linear_probe(model, backbone, batches["train"], batches["valid"], batches["test"])
    out = {}
    for prefix, scores in (("tfidf", tfidf), ("probe", probe)):
        out |= {f"{prefix}_test_accuracy": scores["test_accuracy"], f"{prefix}_valid_accuracy": scores["valid_accuracy"],
                f"{prefix}_C": scores["C"], f"{prefix}_features": scores["features"],
                f"{prefix}_seconds": scores["seconds"]}
    return out
