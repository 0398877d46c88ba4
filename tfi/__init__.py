"""tfi: trade flow imbalance prediction, tracked in MLflow.

Stages: ``prepare`` (labels and splits), ``select`` (LASSO), ``tune`` (Optuna + LightGBM),
``train`` (champion, evaluation, registry), ``score``. Run them with ``python -m tfi <stage>``
or ``mlflow run . -e <stage>``.
"""

__version__ = "0.1.0"
