"""Class decisions: fitted weights, the training prior, and shares held over trailing rows."""

import numpy as np
import pytest

from tfi.core.config.experiment import load_config
from tfi.core.evaluation.metrics import score as macro_f1
from tfi.core.model.class_shares import BLOCK_ROWS, share_weights, trailing_share_classes
from tfi.core.model.decision import ARGMAX, Decision, decide, fit_weights, prior_decision

from .helpers import SMOKE

FITTED = load_config(SMOKE).decision  # rule: fitted


def _rule(rule: str, **settings: int):
    return FITTED.model_copy(update={"rule": rule, **settings})


def _prior_heavy(n=6000, seed=0):
    """Probabilities that always lean to neutral but still rank the rows by their class."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, n, p=[0.3, 0.4, 0.3])
    signal = np.eye(3)[y] * 0.12 + rng.normal(0, 0.05, (n, 3))
    proba = np.array([0.28, 0.44, 0.28]) + signal
    return y, proba / proba.sum(axis=1, keepdims=True)


def test_fitted_weights_beat_argmax_on_macro_f1():
    y, proba = _prior_heavy()
    weights = fit_weights(y, proba, "f1_macro")
    fitted = np.argmax(proba * np.array(weights), axis=1)
    assert macro_f1(y, fitted) > macro_f1(y, proba.argmax(axis=1)) + 0.05
    assert weights[1] == 1.0 and weights[0] > 1 and weights[2] > 1


def test_fitted_weights_are_the_best_of_the_grid_as_the_served_decision_applies_them():
    """The search scores each weight pair as Decision.classes (argmax) would: none beats it."""
    y, proba = _prior_heavy()
    best = macro_f1(y, Decision("fitted", fit_weights(y, proba, "f1_macro")).classes(proba))
    for log_sell in np.linspace(-3, 3, 25):
        for log_buy in np.linspace(-3, 3, 25):
            weights = (float(np.exp(log_sell)), 1.0, float(np.exp(log_buy)))
            assert macro_f1(y, Decision("grid", weights).classes(proba)) <= best + 1e-12


def test_decide_falls_back_to_the_training_prior_without_out_of_fold_predictions():
    y_train = np.array([0] * 20 + [1] * 60 + [2] * 20)
    assert decide(FITTED, "f1_macro", y_train, []) == prior_decision(y_train)
    assert prior_decision(y_train).weights == pytest.approx((3.0, 1.0, 3.0))
    assert decide(_rule("argmax"), "f1_macro", y_train, [_prior_heavy()]) == ARGMAX
    fitted = decide(FITTED, "f1_macro", y_train, [_prior_heavy()])
    assert fitted.rule == "fitted"


def _drifting(n=6000, seed=0, shift=1.0):
    """Probabilities that rank rows by class, whose sell side drifts up halfway through."""
    y, proba = _prior_heavy(n, seed)
    drifted = proba.copy()
    drifted[n // 2 :, 0] *= np.exp(shift)
    return y, drifted / drifted.sum(axis=1, keepdims=True)


def test_share_weights_decide_the_target_shares():
    _, proba = _drifting()
    log_p = np.log(proba)
    sell, buy = log_p[:, 0] - log_p[:, 1], log_p[:, 2] - log_p[:, 1]
    log_sell, log_buy = share_weights(sell, buy, (0.3, 0.4, 0.3), (0.0, 0.0), sweeps=8)
    decided = np.argmax(log_p + np.array([log_sell, 0.0, log_buy]), axis=1)
    assert np.bincount(decided, minlength=3) / len(decided) == pytest.approx(
        [0.3, 0.4, 0.3], abs=0.01
    )


def test_shares_hold_the_training_shares_through_drift_where_fixed_weights_do_not():
    y, proba = _drifting(shift=1.5)
    prior = prior_decision(y[:3000])
    shares = decide(_rule("shares", window=1440, min_rows=600), "f1_macro", y[:3000], [])
    assert shares.rule == "shares" and shares.weights == prior.weights
    late = slice(4500, None)  # after the drift, with a window of rows already drifted
    fixed_shares = np.bincount(prior.classes(proba)[late], minlength=3) / 1500
    held_shares = np.bincount(shares.classes(proba)[late], minlength=3) / 1500
    assert fixed_shares[0] > 0.5  # the prior weights now call most rows "sell"
    assert held_shares == pytest.approx([0.3, 0.4, 0.3], abs=0.05)
    assert macro_f1(y[late], shares.classes(proba)[late]) > macro_f1(
        y[late], prior.classes(proba)[late]
    )


def test_a_shares_class_never_changes_when_later_rows_do():
    _, proba = _drifting()
    decision = Decision("shares", (1.3, 1.0, 1.3), window=1440, min_rows=300)
    before = decision.classes(proba)
    rng = np.random.default_rng(5)
    for t in (299, 300, 1000, 1000 + BLOCK_ROWS - 1, 4321):
        changed = proba.copy()
        changed[t + 1 :] = rng.dirichlet([1, 1, 1], len(proba) - t - 1)
        assert np.array_equal(decision.classes(changed)[: t + 1], before[: t + 1]), t


def test_shares_use_the_prior_weights_until_min_rows_and_for_a_single_row():
    _, proba = _drifting()
    decision = Decision("shares", (1.3, 1.0, 1.3), window=1440, min_rows=600)
    prior = Decision("prior", (1.3, 1.0, 1.3))
    assert np.array_equal(decision.classes(proba)[:600], prior.classes(proba)[:600])
    assert np.array_equal(trailing_share_classes(proba[:1], (1.3, 1.0, 1.3), 1440, 600),
                          prior.classes(proba[:1]))  # fmt: skip
    assert decision.as_dict() == {"rule": "shares", "weights": [1.3, 1.0, 1.3], "window": 1440,
                                  "min_rows": 600}  # fmt: skip


def test_the_shares_solves_quantile_is_numpys_to_the_bit():
    from tfi.core.model.class_shares import _quantile

    rng = np.random.default_rng(5)
    for size in (1, 2, 3, 10, 1001, 10_080):
        values = rng.standard_normal(size) * 3.0
        values[rng.random(size) < 0.2] = 0.0  # ties, as max(0, ...) makes them
        for q in (0.0, 0.3, 1 / 3, 0.5, 0.7, 0.999, 1.0):
            assert _quantile(values.copy(), q) == float(np.quantile(values, q))
