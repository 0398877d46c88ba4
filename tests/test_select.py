"""LASSO from block moments: scikit-learn's answers, the planted features, the fallback rules."""

import numpy as np
import pytest
from sklearn.linear_model import Lasso
from sklearn.preprocessing import StandardScaler

from tfi.core.config.experiment import DataConfig, SelectionConfig, SyntheticSpec
from tfi.core.data import synthetic
from tfi.core.data.sources import load
from tfi.core.errors import SelectionError
from tfi.core.labels.labelled import prepare_labels, training_folds
from tfi.core.labels.split import TRAIN, Fold
from tfi.core.selection.lasso import LassoPath, block_moments, standardise, validation_mse
from tfi.core.selection.select import SelectionProblem, _apply_rules, select_features, select_nested


def _problem(n=3000, p=12, seed=0):
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((n, p)) * rng.uniform(0.5, 5, p) + 3).astype(np.float32)
    X[rng.random((n, p)) < 0.01] = np.nan
    y = 0.5 * np.nan_to_num(X[:, 0]) - 0.3 * np.nan_to_num(X[:, 3]) + rng.standard_normal(n)
    return X, y


def _fold_errors(X, target, fold, alphas, train_stops):
    """A fold's validation MSE per alpha, from block moments, NaNs filled as ``train_stops`` say."""
    bounds = sorted({0, *train_stops, fold.train_stop, fold.valid_start, fold.valid_stop, len(X)})
    blocks = [b.target(0) for b in block_moments(X, target[:, None], bounds, None, train_stops)]

    def span(start, stop):  # a training stop may split a range into several blocks
        parts = blocks[bounds.index(start) : bounds.index(stop)]
        return sum(parts[1:], parts[0])

    train = standardise(span(0, fold.train_stop))
    return validation_mse(
        train, LassoPath(train).extend(alphas), span(fold.valid_start, fold.valid_stop)
    )


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_fold_path_and_validation_error_match_scikit_learn():
    X, y = _problem()
    blocks = [block.target(0) for block in block_moments(X, y[:, None], [0, 900, 1000, 2000, 3000])]
    train = standardise(blocks[0])
    alphas = np.geomspace(0.5, 0.005, 8)
    coefs = LassoPath(train).extend(alphas)
    # scikit-learn on the same rows: NaN -> training mean, scaler fitted on the fold's rows.
    filled = np.where(np.isnan(X), np.nanmean(X, axis=0), X)
    scaler = StandardScaler().fit(filled[:900])
    for k in (2, 5):
        lasso = Lasso(alpha=alphas[k], tol=1e-12, max_iter=100_000)
        lasso.fit(scaler.transform(filled[:900]), y[:900])
        np.testing.assert_allclose(coefs[:, k], lasso.coef_, atol=1e-5)
        mse = np.mean((y[1000:2000] - lasso.predict(scaler.transform(filled[1000:2000]))) ** 2)
        assert validation_mse(train, coefs, blocks[2])[k] == pytest.approx(mse, rel=1e-5)


def test_a_path_solved_in_stretches_equals_one_call_over_the_grid():
    X, y = _problem(p=30)
    X[:, 10:20] = X[:, :10] + 0.1 * np.nan_to_num(X[:, 10:20])  # collinear: a slow path
    train = standardise(block_moments(X, y[:, None], [0, 2000])[0].target(0))
    alphas = np.geomspace(0.5, 0.0005, 12)
    path = LassoPath(train)
    stretched = np.hstack(
        [path.extend(alphas[:1]), path.extend(alphas[1:5]), path.extend(alphas[5:])]
    )
    np.testing.assert_allclose(stretched, LassoPath(train).extend(alphas), atol=1e-10)
    assert path.solved == len(alphas)


def test_the_folds_paths_stop_once_their_mean_error_stops_improving():
    """Early stopping picks the alpha the whole grid picks, and says where it stopped."""
    X, y = _problem(p=30)
    folds = [Fold(900, 1000, 2000), Fold(1900, 2000, 3000)]
    names = [f"f{i}" for i in range(30)]
    whole = select_features(X, y, folds, names, SelectionConfig(n_alphas=40, alpha_patience=None))
    early = select_features(X, y, folds, names, SelectionConfig(n_alphas=40, alpha_patience=3))
    best = int(np.argmin(whole.cv_mse.mean(axis=0)))
    assert best + 3 < 40 - 1  # the planted signal has a minimum well inside the grid
    assert (early.alpha, early.selected) == (whole.alpha, whole.selected)
    np.testing.assert_allclose(early.coef, whole.coef, atol=1e-9)
    solved = best + 4  # the best alpha, then three without improvement
    assert len(early.alphas) == solved
    np.testing.assert_allclose(early.cv_mse, whole.cv_mse[:, :solved], rtol=1e-9)
    assert whole.cv_mse.shape == (2, 40) and np.isfinite(whole.cv_mse).all()


def test_too_few_features_at_the_chosen_alpha_extend_the_full_path():
    """The min_features rule looks down the whole grid, past where the folds stopped."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((2000, 6)).astype(np.float32)
    y = rng.standard_normal(2000)
    folds = [Fold(600, 700, 1300), Fold(1300, 1400, 2000)]
    config = SelectionConfig(n_alphas=20, min_features=6, alpha_patience=2)
    picked = select_features(X, y, folds, list("abcdef"), config)
    assert len(picked.selected) == 6 and "enter the path" in picked.rule
    assert len(picked.alphas) == 20 and np.isnan(picked.cv_mse[:, -1]).all()


def test_nested_selections_from_one_pass_equal_separate_ones():
    """select_nested (one pass for the period and each CV fold) answers as separate calls do."""
    X, y = _problem(p=20)
    X = np.nan_to_num(X)  # the shared pass fills NaNs from the shortest prefix of all
    rng = np.random.default_rng(3)
    names = [f"f{i}" for i in range(20)]
    config = SelectionConfig(n_alphas=30)
    outer = [Fold(900, 1000, 2000), Fold(1900, 2000, 3000)]
    nested = [[Fold(400, 450, 900)], [Fold(900, 950, 1400), Fold(1400, 1450, 1900)]]
    problems = [
        SelectionProblem(y, outer, [y + rng.standard_normal(3000) for _ in outer]),
        *(SelectionProblem(y[: own[-1].valid_stop], own) for own in nested),
    ]
    together = select_nested(X, problems, names, config)
    for problem, selection in zip(problems, together, strict=True):
        alone = select_features(
            X, problem.target, problem.folds, names, config, None, problem.fold_y
        )
        assert selection.selected == alone.selected
        assert selection.alpha == pytest.approx(alone.alpha, rel=1e-6)
        np.testing.assert_allclose(selection.cv_mse, alone.cv_mse, rtol=1e-6)
        np.testing.assert_allclose(selection.coef, alone.coef, atol=1e-8)
    assert together[1].selected != together[0].selected or together[1].alpha != together[0].alpha


def test_rows_argument_equals_a_copied_subset():
    X, y = _problem()
    rows = np.arange(0, 3000, 2)
    folds = [Fold(400, 500, 1000), Fold(900, 1000, 1500)]
    config = SelectionConfig(n_alphas=10, max_features=None)
    direct = select_features(X[rows], y[rows], folds, [f"f{i}" for i in range(12)], config)
    indexed = select_features(X, y[rows], folds, [f"f{i}" for i in range(12)], config, rows=rows)
    np.testing.assert_allclose(direct.coef, indexed.coef, atol=1e-6)
    assert direct.selected == indexed.selected


def test_each_fold_is_scored_on_its_own_target():
    """Per-fold targets (classes from each fold's thresholds) drive that fold's CV error only."""
    X, y = _problem()
    rng = np.random.default_rng(1)
    fold_y = [y + rng.standard_normal(len(y)), np.round(y)]
    folds = [Fold(900, 1000, 2000), Fold(1900, 2000, 3000)]
    config = SelectionConfig(n_alphas=8, max_features=None)
    names = [f"f{i}" for i in range(12)]
    shared = select_features(X, y, folds, names, config)
    same = select_features(X, y, folds, names, config, fold_y=[y, y])
    np.testing.assert_allclose(same.cv_mse, shared.cv_mse, rtol=1e-9)

    own = select_features(X, y, folds, names, config, fold_y=fold_y)
    np.testing.assert_allclose(own.path, shared.path, atol=1e-9)  # the period's own target
    stops = [fold.train_stop for fold in folds]
    for i, (fold, target) in enumerate(zip(folds, fold_y, strict=True)):
        expected = _fold_errors(X, target, fold, own.alphas, stops)
        np.testing.assert_allclose(own.cv_mse[i], expected, rtol=1e-6)
        assert not np.allclose(own.cv_mse[i], shared.cv_mse[i])


def test_no_fold_sees_rows_after_its_validation_block():
    """A fold's LASSO problem (NaN fill, scaler, validation error) comes from its own rows."""
    X, y = _problem()
    X[np.random.default_rng(2).random(X.shape) < 0.2] = np.nan  # the NaN fill matters
    folds = [Fold(900, 1000, 1500), Fold(1400, 1500, 2000), Fold(1900, 2000, 2500)]
    stops = [fold.train_stop for fold in folds]
    alphas = np.geomspace(0.5, 0.005, 8)
    for fold in folds:
        later = X.copy()
        later[fold.valid_stop :] += 50.0  # the future moves, and with it the period's means
        np.testing.assert_array_equal(
            _fold_errors(later, y, fold, alphas, stops), _fold_errors(X, y, fold, alphas, stops)
        )
        # Filled with the whole period's means instead, the fold would have seen the future.
        assert not np.allclose(
            _fold_errors(later, y, fold, alphas, ()), _fold_errors(X, y, fold, alphas, ())
        )


def test_a_feature_first_seen_in_a_later_fold_is_filled_from_that_fold():
    X, y = _problem()
    X[:1200, 5] = np.nan  # no value in the first fold's training rows
    bounds = [0, 900, 1000, 1400, 1500, 2000, 3000]
    blocks = block_moments(X, y[:, None], bounds, train_stops=[900, 1400])
    # In centred coordinates a NaN sits at 0: a block's sum over feature 5 is then the sum of
    # (value - fill) over the values present, which pins down the fill value.
    present = ~np.isnan(X[1500:2000, 5])
    fill = np.nanmean(X[:1400, 5])
    np.testing.assert_allclose(
        blocks[4].sx[5], np.sum(X[1500:2000, 5][present] - np.float32(fill)), rtol=1e-4
    )
    assert fill != pytest.approx(np.nanmean(X[:, 5]), abs=1e-3)
    # Fold 0 sees the feature as a constant: it cannot enter fold 0's path.
    fold0 = standardise(blocks[0].target(0))
    assert fold0.r[5] == 0.0
    assert not fold0.S[5].any()


def test_selects_the_planted_informative_features(smoke_config):
    spec = SyntheticSpec(rows=20000, features=60, informative=5, collinear=3, seed=2)
    config = smoke_config.with_overrides(
        **{
            "data.synthetic": spec.model_dump(),
            "split.test_start": "2023-03-13",
            "cv.n_splits": 4,
            "selection.max_features": None,
        }
    )
    data = load(DataConfig(synthetic=spec))
    labelled = prepare_labels(data, config)
    rows = labelled.rows(TRAIN)
    result = select_features(
        data.features,
        labelled.target[rows],
        training_folds(labelled, config.cv),
        data.feature_names,
        config.selection,
        rows=rows,
    )
    planted = set(synthetic.layout(spec).informative)
    collinear = synthetic.layout(spec).collinear
    # Every informative view is selected itself or through one of its near-copies.
    for name in planted:
        copies = {copy for copy, source in collinear.items() if source == name}
        assert {name, *copies} & set(result.selected), name
    assert len(result.selected) < len(data.feature_names) / 2
    assert result.cv_mse.shape == (4, len(result.alphas))


def test_cap_keeps_the_largest_coefficients():
    X, y = _problem()
    folds = [Fold(900, 1000, 2000), Fold(1900, 2000, 3000)]
    capped = select_features(X, y, folds, list("abcdefghijkl"), SelectionConfig(max_features=1))
    assert capped.selected == ("a",)
    assert "max_features" in capped.rule


def test_empty_support_takes_the_first_features_to_enter_the_path():
    alphas = np.array([1.0, 0.5, 0.25, 0.1])
    path = np.array(
        [
            [0.0, 0.0, 0.0, 0.2],  # a enters last
            [0.0, 0.3, 0.4, 0.5],  # b enters first
            [0.0, 0.0, 0.1, 0.1],  # c enters second
            [0.0, 0.0, 0.0, 0.0],  # d never
        ]
    )
    selected, rule = _apply_rules(path, alphas, 0, list("abcd"), SelectionConfig(min_features=2))
    assert selected == ("b", "c")
    assert "first 2 features to enter the path" in rule
    with pytest.raises(SelectionError, match="LASSO kept 0 features"):
        _apply_rules(path, alphas, 0, list("abcd"), SelectionConfig(on_too_few="error"))


def test_pure_noise_never_yields_an_empty_list():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((2000, 6)).astype(np.float32)
    y = rng.standard_normal(2000)
    folds = [Fold(600, 700, 1300), Fold(1300, 1400, 2000)]
    picked = select_features(X, y, folds, list("abcdef"), SelectionConfig(min_features=2))
    assert len(picked.selected) >= 2
    if picked.n_lasso < 2:
        assert "enter the path" in picked.rule


def test_one_huge_value_does_not_overflow_the_moments(caplog):
    """A finite 1e20 in a float32 feature once made XᵀX inf and emptied the selection."""
    X, y = _problem()
    X[1500, 7] = 1e20
    folds = [Fold(900, 1000, 2000), Fold(1900, 2000, 3000)]
    config = SelectionConfig(n_alphas=10, max_features=None, alpha_patience=None)
    with caplog.at_level("WARNING", logger="tfi.core.selection.select"):
        selection = select_features(X, y, folds, [f"f{i}" for i in range(12)], config)
    assert np.isfinite(selection.cv_mse).all()
    assert {"f0", "f3"} <= set(selection.selected) and "f7" not in selection.selected
    assert "['f7'] have values over 1e+04 times their usual spread" in caplog.text
