"""Logging the champion as an MLflow model and promoting it in the model registry.

The model is logged complete (booster, feature list, signature, input example, confusion matrix
and classification reports, and the class decision's weights) before a version is registered. The
version gets its test metrics and the promotion decision as tags and description, and only then
an alias. ``champion`` goes to a candidate that passed its CV check against the rule baselines
and the persistence floor, and whose improvement over the current champion on the test rows
neither model trained on (same data, same label settings, the configured metric) has a lower
bound above zero (:func:`decide_promotion`); otherwise ``challenger``, with the reason. If any
registry step fails, the new version is deleted again, so the registry is left as it was and an
alias never points at an incomplete version.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import lightgbm as lgb
import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema

from tfi.core import keys
from tfi.core.classes import PROBABILITY_COLUMNS
from tfi.core.config.experiment import RegistryConfig
from tfi.core.errors import StageError
from tfi.core.evaluation.intervals import MIN_BLOCKS, Interval
from tfi.core.model import class_shares
from tfi.runtime.interrupts import critical_section

log = logging.getLogger(__name__)

SERVING_CODE = Path(__file__).with_name("serving_model.py")
CLASS_SHARES_CODE = Path(class_shares.__file__)
REPORT_FILES = ("confusion_matrix.png", "classification_report.json", "classification_report.txt")
_RUNTIME = ("mlflow", "lightgbm", "numpy", "pandas", "scipy")


def signature(features: Sequence[str]) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec("double", name) for name in features]),
        outputs=Schema(
            [
                ColSpec("long", "prediction"),
                *(ColSpec("double", name) for name in PROBABILITY_COLUMNS),
            ]
        ),
    )


@critical_section
def log_model(
    run_id: str,
    booster: lgb.Booster,
    features: Sequence[str],
    input_example: pd.DataFrame,
    report_dir: Path,
    decision: Mapping[str, Any] | None = None,
) -> str:
    """Log the pyfunc model from run ``run_id``, with the report files beside its MLmodel.

    ``decision`` is the class decision (:meth:`tfi.core.model.decision.Decision.as_dict`;
    argmax when None). The model carries :mod:`tfi.core.model.class_shares` beside its code, so
    it decides as tfi does without tfi installed. Returns the logged model's URI.
    """
    decision = dict(decision or {"rule": "argmax", "weights": [1.0, 1.0, 1.0]})
    missing = [name for name in REPORT_FILES if not (report_dir / name).is_file()]
    if missing:
        raise StageError(f"cannot log the model without its report files {missing}")
    with tempfile.TemporaryDirectory() as tmp:
        booster_file = Path(tmp) / "booster.txt"
        booster.save_model(booster_file)
        # Model.log with an explicit run: mlflow.pyfunc.log_model would need a global active run.
        info = Model.log(
            artifact_path=None,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            name="model",
            python_model=str(SERVING_CODE),
            artifacts={"booster": str(booster_file)},
            code_paths=[str(CLASS_SHARES_CODE)],
            model_config={
                "features": list(features),
                "decision": decision,
            },
            signature=signature(features),
            input_example=input_example,
            pip_requirements=[f"{name}=={installed_version(name)}" for name in _RUNTIME],
        )
    client = MlflowClient()
    client.log_model_artifacts(info.model_id, str(report_dir))
    present = {Path(item.path).name for item in mlflow.artifacts.list_artifacts(info.model_uri)}
    absent = [name for name in REPORT_FILES if name not in present]
    if absent:
        raise StageError(f"model {info.model_uri} is missing {absent} after logging")
    return info.model_uri


@dataclass(frozen=True)
class Promotion:
    version: str
    alias: str
    score: float | None  # the candidate's test metric on the rows compared with the champion
    champion_version: str | None
    champion_score: float | None
    reason: str
    metric: str = "f1_macro"  # what score and champion_score measure
    comparison: Comparison | None = None


@dataclass(frozen=True)
class ChampionVersion:
    """The registered champion a candidate is compared with."""

    name: str
    version: str
    tags: dict[str, str]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class Comparison:
    """Candidate and champion on the same test rows, unseen by both: ``metric`` of each, and
    the candidate's improvement (its metric minus the champion's, the reverse for a loss) with
    its interval over blocks (:mod:`tfi.core.evaluation.intervals`)."""

    score: float
    champion_score: float
    rows: int
    metric: str
    higher_is_better: bool
    improvement: Interval
    rows_key: str = ""  # which rows were compared (first, last, count)
    attempt: int = 1  # the how-manieth comparison with this champion on these rows

    @property
    def better(self) -> bool:
        """Evidence, not a point estimate: the improvement has a lower bound (enough blocks
        for an interval) and it is above zero."""
        return self.improvement.available and self.improvement.low > 0


@critical_section
def register_and_promote(
    model_uri: str,
    config: RegistryConfig,
    compare: Callable[[ChampionVersion], Comparison],
    tags: Mapping[str, str],
    description: str,
    blocked: str | None = None,
) -> Promotion:
    """Register a version and give it ``champion`` or ``challenger``; roll back on failure.

    ``compare`` scores the candidate and the current champion on rows neither trained on (a
    StageError when it cannot); ``blocked`` says why the candidate may not be champion at all.
    """
    client = MlflowClient()
    created = mlflow.register_model(model_uri, config.model_name, tags=dict(tags))
    try:
        promotion = _decide(client, config, created.version, compare, blocked)
        client.update_model_version(
            config.model_name, created.version, description=f"{description}\n\n{promotion.reason}"
        )
        for key, value in {
            keys.PROMOTION: promotion.alias,
            keys.PROMOTION_REASON: promotion.reason,
            keys.champion_score(promotion.metric): promotion.champion_score,
        }.items():
            if value is not None:
                client.set_model_version_tag(config.model_name, created.version, key, str(value))
        # The alias moves last: before it, a failure leaves only a version we delete below.
        client.set_registered_model_alias(config.model_name, promotion.alias, created.version)
        replaced = promotion.champion_version
        if promotion.comparison is not None and replaced is not None:
            _count_comparison(client, config, replaced, promotion.comparison)
        if promotion.alias == config.champion_alias and replaced is not None:
            # The tags agree with the aliases: the former champion says who replaced it.
            client.set_model_version_tag(
                config.model_name, replaced, keys.PROMOTION, f"replaced by v{created.version}"
            )
    except BaseException:
        log.error("registering %s failed: deleting version %s", model_uri, created.version)
        client.delete_model_version(config.model_name, created.version)
        raise
    return promotion


def comparisons_made(tags: Mapping[str, str]) -> dict[str, int]:
    """How often a champion was compared on each set of rows (its ``tfi.comparisons`` tag)."""
    try:
        made = json.loads(tags.get(keys.COMPARISONS, "{}"))
    except json.JSONDecodeError:
        return {}
    return {str(rows): int(count) for rows, count in made.items()} if isinstance(made, dict) else {}


def _count_comparison(
    client: MlflowClient, config: RegistryConfig, version: str, comparison: Comparison
) -> None:
    """Record one more comparison on these rows on the champion: the next one on the same
    rows is held to a stricter bound (:meth:`RegistryConfig.two_sided`)."""
    current = client.get_model_version(config.model_name, version)
    made = comparisons_made(dict(current.tags or {}))
    made[comparison.rows_key] = max(made.get(comparison.rows_key, 0), comparison.attempt)
    client.set_model_version_tag(
        config.model_name, version, keys.COMPARISONS, json.dumps(made, sort_keys=True)
    )


def _decide(
    client: MlflowClient,
    config: RegistryConfig,
    version: str,
    compare: Callable[[ChampionVersion], Comparison],
    blocked: str | None,
) -> Promotion:
    try:
        current = client.get_model_version_by_alias(config.model_name, config.champion_alias)
    except MlflowException:
        current = None
    if current is None:
        return decide_promotion(
            config, version, None, _why_no_champion(client, config, version), blocked
        )
    try:
        compared: Comparison | str = compare(
            ChampionVersion(current.name, current.version, dict(current.tags or {}))
        )
    except StageError as exc:
        compared = str(exc)
    return decide_promotion(config, version, current.version, compared, blocked)


def _why_no_champion(client: MlflowClient, config: RegistryConfig, version: str) -> str | None:
    """None for a model's first version; else what became of its champion. A version whose
    tag still says champion though the alias is gone gets a tag that agrees with the aliases."""
    others = [
        found
        for found in client.search_model_versions(f"name = '{config.model_name}'")
        if str(found.version) != str(version)
    ]
    if not others and str(version) == "1":  # numbers go on after a deletion: v2 had a v1
        return None
    orphaned = sorted(
        (found for found in others if found.tags.get(keys.PROMOTION) == config.champion_alias),
        key=lambda found: int(found.version),
    )
    for found in orphaned:
        client.set_model_version_tag(
            config.model_name, found.version, keys.PROMOTION, "champion alias removed"
        )
    if orphaned:
        names = ", ".join(f"v{found.version}" for found in orphaned)
        return f"no version holds alias {config.champion_alias!r} ({names} lost it)"
    return (
        f"no version holds alias {config.champion_alias!r} (the champion's version was "
        "deleted or its alias removed)"
    )


def decide_promotion(
    config: RegistryConfig,
    version: str,
    champion_version: str | None,
    compared: Comparison | str | None,
    blocked: str | None,
) -> Promotion:
    """Which alias a new version gets, and why (pure).

    ``champion_version`` is the current champion (None: there is none); ``compared`` the
    comparison with it, or why there is none (other data, labels, too few unseen rows), or,
    without a champion, what became of it (None: this is the first version);
    ``blocked`` why the version may not be champion at all (the CV gate, the persistence floor).
    Champion only when nothing blocks it and, with a champion in place, the lower bound of its
    improvement on the rows neither model trained on is above zero.
    """
    champion, challenger = config.champion_alias, config.challenger_alias
    if champion_version is None:
        situation = compared if isinstance(compared, str) else "first version"
        if blocked:
            reason = f"{situation}; {blocked}: {challenger}"
            return Promotion(version, challenger, None, None, None, reason)
        return Promotion(version, champion, None, None, None, f"{situation}: {champion}")
    if not isinstance(compared, Comparison):
        reason = (
            f"champion v{champion_version} cannot be compared on unseen rows ({compared}); "
            f"kept it as champion, this version is {challenger}"
        )
        if blocked:
            reason = f"{blocked}; {reason}"
        return Promotion(version, challenger, None, champion_version, None, reason)
    verdict = "beats" if compared.better else "does not beat"
    level = f"{config.confidence:.0%}"
    gain = compared.improvement
    if compared.attempt > 1:
        level = (
            f"comparison {compared.attempt} with it on these rows, "
            f"{1 - (1 - gain.confidence) / 2:.2%}"
        )
    bound = (
        f"{level} lower bound {gain.low:+.4f}"
        if gain.available
        else f"evidence too thin for a bound: {gain.blocks} blocks of {config.block}, "
        f"{MIN_BLOCKS} needed"
    )
    versus = (
        f"test {compared.metric} {compared.score:.4f} {verdict} champion v{champion_version}'s "
        f"{compared.champion_score:.4f} on {compared.rows} test rows neither trained on "
        f"(improvement {gain.difference:+.4f}, {bound})"
    )
    alias = champion if compared.better and not blocked else challenger
    reason = f"{blocked}; {versus}: {alias}" if blocked else f"{versus}: {alias}"
    return Promotion(
        version,
        alias,
        compared.score,
        champion_version,
        compared.champion_score,
        reason,
        compared.metric,
        compared,
    )
