"""Labeled data for stage 3: balanced label budgets, a validation hold-out, a test sample."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import ClassifyConfig, RunConfig
from pipeline.data.corpora import class_counts, dataset_labels, is_registered, load_corpus, resolve_data_dir
from pipeline.errors import DataError

USER_TEST_FRAC = 0.2  # a user's file with no test file: this share becomes the test set
SPLITS = ("train", "valid", "test")


@dataclass
class LabeledSplits:
    classes: list[str]
    train: pd.DataFrame  # each frame's index: row numbers in the file it was read from
    valid: pd.DataFrame
    test: pd.DataFrame
    test_source: str

    def indices(self) -> dict[str, list[int]]:
        """Row numbers of each sample (saved in the classifier's model file)."""
        return {name: [int(i) for i in getattr(self, name).index] for name in SPLITS}


def _load(source: str, split: str | None, cc: ClassifyConfig, data_dir: Path) -> pd.DataFrame:
    frame = load_corpus(source, split, data_dir=data_dir, text_col=cc.text_col, label_col=cc.label_col,
                        allowed_labels=dataset_labels(source))
    return frame.reset_index(drop=True)


def _sources(cc: ClassifyConfig) -> tuple[tuple[str, str | None], tuple[str, str | None] | None, str]:
    """Where labeled and test rows come from: ((source, split), (source, split) or None = held out of
    the labeled file, and how the test set is described)."""
    if not is_registered(cc.corpus):
        labeled = (cc.corpus, None)
        if cc.test_corpus is None:
            return labeled, None, f"{USER_TEST_FRAC:.0%} of {cc.corpus} held out"
    else:
        labeled = (cc.corpus, "train")
    if cc.test_corpus is not None:  # a registry name means its test split
        return labeled, (cc.test_corpus, "test" if is_registered(cc.test_corpus) else None), cc.test_corpus
    return labeled, (cc.corpus, "test"), f"{cc.corpus}/test"


def balanced_sample(frame: pd.DataFrame, n: int | None, rng: np.random.Generator, what: str) -> pd.DataFrame:
    """n rows with the classes as equal as possible (all rows if n is None)."""
    if n is None:
        return frame
    if n > len(frame):
        raise DataError(f"{what}: asked for {n} examples but only {len(frame)} are available")
    groups = {label: rows.index.to_numpy() for label, rows in frame.groupby("label", sort=True)}
    share, extra = divmod(n, len(groups))
    picked = []
    for k, (label, idx) in enumerate(groups.items()):
        want = share + (1 if k < extra else 0)
        if want > len(idx):
            raise DataError(f"{what}: asked for {want} examples of class {label!r} but only {len(idx)} exist "
                            f"(classes found: {class_counts(frame['label'])})")
        picked.append(rng.choice(idx, size=want, replace=False))
    return frame.loc[np.sort(np.concatenate(picked))]


def classify_seed(cfg: RunConfig) -> int:
    """The classify stage's seed (labeled sample, hold-out, initialisation, batch order): its own, else the run's."""
    return cfg.seed if cfg.classify.seed is None else cfg.classify.seed


def stage_splits(cfg: RunConfig) -> LabeledSplits:
    """The classify stage's splits, as the stage and the validation (`pipeline.validate`) load them: its own
    seed for the labeled sample and hold-out, the run's seed for the test sample."""
    return load_splits(cfg.classify, resolve_data_dir(cfg.data_dir), classify_seed(cfg), test_seed=cfg.seed)


def load_splits(cc: ClassifyConfig, data_dir: Path, seed: int, test_seed: int | None = None) -> LabeledSplits:
    """The labeled sample and validation hold-out drawn with `seed`, the test sample with `test_seed`
    (default: `seed`), so classifiers of several seeds can be scored on the same test reviews."""
    rng, test_rng = np.random.default_rng(seed), np.random.default_rng(seed if test_seed is None else test_seed)
    labeled_from, test_from, test_source = _sources(cc)
    labeled = _load(*labeled_from, cc, data_dir)
    if test_from is not None:
        test = _load(*test_from, cc, data_dir)
    else:
        n_held = int(len(labeled) * USER_TEST_FRAC)
        _enough(labeled, n_held, labeled, f"{cc.corpus}: {len(labeled)} labeled rows are too few to hold "
                f"{USER_TEST_FRAC:.0%} out as the test set ({n_held} rows); add rows or set classify.test_corpus")
        test_idx = balanced_sample(labeled, n_held, test_rng, cc.corpus).index
        test, labeled = labeled.loc[test_idx], labeled.drop(index=test_idx)
    classes = sorted(labeled["label"].unique())
    unseen = sorted(set(test["label"]) - set(classes))
    if unseen:
        raise DataError(f"{test_source}: labels {unseen} do not occur in the training data {cc.corpus}")
    valid = balanced_sample(labeled, cc.n_valid, rng, f"{cc.corpus} (validation hold-out, classify.n_valid)")
    rest = labeled.drop(index=valid.index)
    _enough(rest, len(rest), labeled, f"{cc.corpus}: {len(rest)} rows are left for training after the classify.n_valid="
            f"{cc.n_valid} hold-out{'' if test_from is not None else ' and the test hold-out'}; "
            "lower classify.n_valid or add rows")
    train = balanced_sample(rest, cc.n_labels, rng, f"{cc.corpus} (classify.n_labels, after the n_valid hold-out)")
    test = balanced_sample(test, cc.n_test, test_rng, f"{test_source} (classify.n_test)")
    return LabeledSplits(classes, train, valid, test, test_source)


def splits_at(cc: ClassifyConfig, data_dir: Path, indices: dict[str, list[int]], classes: list[str]) -> LabeledSplits:
    """The samples a classify stage used, from the row numbers its model file recorded (`indices`)."""
    labeled_from, test_from, test_source = _sources(cc)
    labeled = _load(*labeled_from, cc, data_dir)
    test = labeled if test_from is None else _load(*test_from, cc, data_dir)
    try:
        frames = [frame.loc[indices[name]] for frame, name in ((labeled, "train"), (labeled, "valid"), (test, "test"))]
    except KeyError as err:
        raise DataError(f"{cc.corpus}: the data no longer holds the rows the classifier used ({err})") from None
    return LabeledSplits(list(classes), *frames, test_source)


def _enough(split: pd.DataFrame, n: int, labeled: pd.DataFrame, message: str) -> None:
    """A split of n rows needs one example of every class of `labeled` at least: training, validating or
    testing on fewer is meaningless (and an empty split breaks the data loaders)."""
    classes = set(labeled["label"])
    if n < len(classes) or not classes <= set(split["label"]):
        raise DataError(f"{message} (at least one per class is needed; classes found: {class_counts(labeled['label'])})")
