"""Logging the champion as an MLflow model and promoting it in the model registry.

The model is logged complete (booster, feature list, signature, input example, confusion matrix
and classification reports) before a version is registered. The version gets its test metrics
and the promotion decision as tags and description, and only then an alias: ``champion`` if it
beats the current champion's test macro-F1 on the same test period, else ``challenger``. If any
registry step fails, the new version is deleted again, so the registry is left as it was and an
alias never points at an incomplete version.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path

import lightgbm as lgb
import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema

from tfi.config import RegistryConfig
from tfi.errors import StageError
from tfi.interrupts import critical_section

log = logging.getLogger(__name__)

SERVING_CODE = Path(__file__).with_name("serving_model.py")
REPORT_FILES = ("confusion_matrix.png", "classification_report.json", "classification_report.txt")
_RUNTIME = ("mlflow", "lightgbm", "numpy", "pandas", "scipy")


def signature(features: Sequence[str]) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec("double", name) for name in features]),
        outputs=Schema(
            [
                ColSpec("long", "prediction"),
                ColSpec("double", "p_sell"),
                ColSpec("double", "p_neutral"),
                ColSpec("double", "p_buy"),
            ]
        ),
    )


@critical_section
def log_model(
    booster: lgb.Booster,
    features: Sequence[str],
    input_example: pd.DataFrame,
    report_dir: Path,
) -> ModelInfo:
    """Log the pyfunc model in the active run, with the report files beside its MLmodel."""
    missing = [name for name in REPORT_FILES if not (report_dir / name).is_file()]
    if missing:
        raise StageError(f"cannot log the model without its report files {missing}")
    with tempfile.TemporaryDirectory() as tmp:
        booster_file = Path(tmp) / "booster.txt"
        booster.save_model(booster_file)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(SERVING_CODE),
            artifacts={"booster": str(booster_file)},
            model_config={"features": list(features)},
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
    return info


@dataclass(frozen=True)
class Promotion:
    version: str
    alias: str
    score: float
    champion_version: str | None
    champion_score: float | None
    reason: str


@critical_section
def register_and_promote(
    model_uri: str,
    config: RegistryConfig,
    score: float,
    score_champion: Callable[[str], float],
    tags: Mapping[str, str],
    description: str,
) -> Promotion:
    """Register a version and give it ``champion`` or ``challenger``; roll back on failure."""
    client = MlflowClient()
    created = mlflow.register_model(model_uri, config.model_name, tags=dict(tags))
    try:
        promotion = _decide(client, config, created.version, score, score_champion)
        client.update_model_version(
            config.model_name, created.version, description=f"{description}\n\n{promotion.reason}"
        )
        for key, value in {
            "tfi.promotion": promotion.alias,
            "tfi.promotion_reason": promotion.reason,
            "tfi.champion_test_f1_macro": promotion.champion_score,
        }.items():
            if value is not None:
                client.set_model_version_tag(config.model_name, created.version, key, str(value))
        # The alias moves last: before it, a failure leaves only a version we delete below.
        client.set_registered_model_alias(config.model_name, promotion.alias, created.version)
    except BaseException:
        log.error("registering %s failed: deleting version %s", model_uri, created.version)
        client.delete_model_version(config.model_name, created.version)
        raise
    return promotion


def _decide(
    client: MlflowClient,
    config: RegistryConfig,
    version: str,
    score: float,
    score_champion: Callable[[str], float],
) -> Promotion:
    try:
        current = client.get_model_version_by_alias(config.model_name, config.champion_alias)
    except MlflowException:
        current = None
    if current is None:
        return Promotion(
            version, config.champion_alias, score, None, None, "first version: champion"
        )
    try:
        champion_score = score_champion(f"models:/{config.model_name}/{current.version}")
    except StageError as exc:
        return Promotion(
            version,
            config.challenger_alias,
            score,
            current.version,
            None,
            f"champion v{current.version} cannot be scored on this test period ({exc}); "
            "kept it as champion",
        )
    better = score > champion_score
    alias = config.champion_alias if better else config.challenger_alias
    verdict = "beats" if better else "does not beat"
    return Promotion(
        version,
        alias,
        score,
        current.version,
        champion_score,
        f"test macro-F1 {score:.4f} {verdict} champion v{current.version}'s {champion_score:.4f} "
        f"on the same test period: {alias}",
    )
