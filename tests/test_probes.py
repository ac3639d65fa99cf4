"""Direction estimators beside the mean difference (`lib.vectors.lda_direction`, `probe_direction`) and the monitor
kit (`lib.kits.probes`), each against scikit-learn as the independent route: LDA with Ledoit-Wolf shrinkage,
L2-penalised logistic regression, the ROC AUC; and the per-token monitor against a hand forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ByteTokenizer, hand_block_outputs

from lib.kits.probes import auroc, direction_report, token_projections
from lib.models import tiny_model
from lib.vectors import lda_direction, ledoit_wolf_shrinkage, mean_difference, probe_direction


def _classes(n: int = 60, d: int = 12, seed: int = 0):
    """Two Gaussian classes with a shared anisotropic covariance: the whitened difference is not the mean
    difference, so LDA and the probe must differ from it (and agree with each other's reference)."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) * np.linspace(0.2, 3.0, d)
    shift = rng.normal(size=d)
    a = rng.normal(size=(n, d)) @ mixing + shift
    b = rng.normal(size=(n, d)) @ mixing
    return {3: torch.tensor(a, dtype=torch.float32)}, {3: torch.tensor(b, dtype=torch.float32)}


def _cosine(x, y) -> float:
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def test_lda_matches_scikit_learn_and_is_not_the_mean_difference():
    from sklearn.covariance import ledoit_wolf_shrinkage as sk_shrinkage
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    target, baseline = _classes()
    x = torch.cat([target[3], baseline[3]]).numpy().astype(np.float64)
    y = np.r_[np.ones(60), np.zeros(60)]
    centered = (target[3].numpy() - target[3].numpy().mean(0)).astype(np.float64)
    assert ledoit_wolf_shrinkage(torch.tensor(centered)) == pytest.approx(sk_shrinkage(centered, assume_centered=True),
                                                                          rel=1e-6)
    reference = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(x, y).coef_[0]
    ours = lda_direction(target, baseline)[3]
    assert _cosine(ours, reference) > 0.99999
    assert _cosine(ours, mean_difference(target, baseline)[3]) < 0.95  # whitening changed the direction
    difference = (target[3].mean(0) - baseline[3].mean(0)) @ (ours / ours.norm())
    assert float(ours.norm()) == pytest.approx(float(difference), rel=1e-5)  # on the mean difference's scale


def test_probe_matches_scikit_learn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    target, baseline = _classes(seed=1)
    x = torch.cat([target[3], baseline[3]]).double().numpy()
    y = np.r_[np.ones(60), np.zeros(60)]
    mean, std = x.mean(0), x.std(0, ddof=1)
    l2 = 1e-2  # ours: mean log-loss + l2 |w|^2; scikit-learn: C * summed log-loss + |w|^2 / 2
    fit = LogisticRegression(C=1 / (2 * l2 * len(y)), tol=1e-10, max_iter=10000).fit((x - mean) / std, y)
    ours = probe_direction(target, baseline, l2=l2)[3]
    assert _cosine(ours, fit.coef_[0] / std) > 0.999
    assert ours @ (target[3].mean(0) - baseline[3].mean(0)) > 0


def test_auroc_against_scikit_learn_and_a_held_out_report():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    scores = np.round(rng.normal(size=40), 1)  # rounded: ties
    labels = rng.random(40) > 0.5
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    with pytest.raises(ValueError, match="one class"):
        auroc(scores, np.ones(40, bool))
    train = _classes(seed=3)
    test = _classes(seed=4)
    report = direction_report(*train, *test, estimators=("mean_difference", "lda", "probe"))
    assert set(report.estimator) == {"mean_difference", "lda", "probe"} and (report.layer == 3).all()
    by = report.set_index("estimator")
    assert by.loc["lda", "auc"] >= by.loc["mean_difference", "auc"]  # the whitened direction separates better
    assert by.loc["mean_difference", "cosine_to_mean_difference"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not among"):
        direction_report(*train, *test, estimators=("svm",))


def test_token_projections_by_a_hand_forward():
    model, tokenizer = tiny_model("llama", n_layers=2, seed=1), ByteTokenizer(chat=True)
    direction = {1: torch.randn(64, generator=torch.Generator().manual_seed(0))}
    got = token_projections(model, tokenizer, ["Hi", "Tell me more"], ["yes indeed", "no"], direction, 1)
    from lib.generation import render_chat

    unit = direction[1] / direction[1].norm()
    for prompt, text, values in zip(["Hi", "Tell me more"], ["yes indeed", "no"], got, strict=True):
        start = len(tokenizer(render_chat(tokenizer, prompt), add_special_tokens=False)["input_ids"])
        ids = tokenizer(render_chat(tokenizer, prompt) + text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            expected = (hand_block_outputs(model, ids)[1][start:] @ unit).numpy()
        np.testing.assert_allclose(values, expected, atol=1e-5)
        assert len(values) == len(tokenizer(text, add_special_tokens=False)["input_ids"])
