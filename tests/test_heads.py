"""Tiny shapes: the lp_ft head (fixed standardisation + linear, started from the linear probe)."""
import numpy as np
import pytest
import torch
from torch import nn

from pipeline.models.heads import Standardize, init_from_probe, linear_head, use_head
from pipeline.training.baselines import fit_tuned_logistic_regression


def _features(n: int, d: int, n_class: int, scale: float, seed: int = 0):
    """Pooled features as a barely trained LM gives them: 0.87 + scale x (class signal + noise)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_class, n)
    centres = rng.normal(size=(n_class, d))
    return (0.87 + scale * (centres[y] + rng.normal(size=(n, d)))).astype(np.float32), y


@pytest.mark.parametrize("n_class", [2, 3])
def test_head_started_from_the_probe_predicts_what_the_probe_predicts(n_class):
    x, y = _features(300, 16, n_class, scale=1.0)
    head = linear_head(16, n_class, drop_mult=1.0)
    scores = init_from_probe(head, x[:200], y[:200], x[200:], y[200:])
    head.eval()
    with torch.no_grad():
        probs = torch.softmax(head(torch.from_numpy(x[200:])), dim=1).numpy()
    z = (x.astype(np.float64) - x[:200].mean(0)) / x[:200].std(0, ddof=1)
    fitted, same = fit_tuned_logistic_regression(z[:200], y[:200], z[200:], y[200:], standardize=False)
    assert same["C"] == scores["C"]
    np.testing.assert_allclose(probs, fitted.predict_proba(z[200:]), atol=1e-4)
    assert scores["valid_accuracy"] >= 0.8  # separable classes: a broken copy of the weights would sit near chance


def test_standardisation_keeps_features_that_vary_by_1e_6_where_batchnorm_flattens_them():
    """The pretrained bert's collapse (RESULTS.md): between-review SD ~3e-6 around 0.87. BatchNorm's
    eps = 1e-5 floors the SD at 3.2e-3 and hands the head the same input for every review."""
    x, y = _features(256, 8, 2, scale=3e-6)
    standardize = Standardize(8)
    standardize.fit(x)
    ours = standardize(torch.from_numpy(x))
    assert 0.9 < float(ours.std(0).mean()) < 1.1
    with torch.no_grad():
        flattened = nn.BatchNorm1d(8).train()(torch.from_numpy(x))
    assert float(flattened.std(0).mean()) < 0.01
    head = linear_head(8, 2, drop_mult=1.0)
    init_from_probe(head, x[:200], y[:200], x[200:], y[200:])
    head.eval()
    with torch.no_grad():
        accuracy = float((head(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
    assert accuracy >= 0.9


def test_use_head_swaps_in_place_and_refuses_unknown_kinds():
    head = nn.Sequential(nn.BatchNorm1d(12), nn.Linear(12, 50), nn.ReLU(), nn.Linear(50, 2))
    model = nn.Sequential(nn.Identity(), head)
    use_head(head, "ulmfit", 2, 1.0)
    assert len(head) == 4
    use_head(head, "lp_ft", 2, 0.5)
    assert model[1] is head and isinstance(head[0], Standardize) and head[-1].in_features == 12
    assert head[1].p == pytest.approx(0.05)
    assert set(model.state_dict()) == {"1.0.mean", "1.0.inv_sd", "1.2.weight", "1.2.bias"}
    with pytest.raises(ValueError, match="unknown head"):
        use_head(head, "mlp", 2, 1.0)
