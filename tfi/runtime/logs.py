"""Log lines of a tfi process: one stderr handler, passwords in URIs masked in every line.

Libraries with their own handlers (MLflow, Optuna) are routed by their layers
(:func:`tfi.tracking.store.mask_mlflow_output`, :func:`tfi.search.storage.route_optuna_logs`).
"""

from __future__ import annotations

import logging
import os
import sys

from tfi.runtime.uris import mask_text

_NOISY = ("optuna", "alembic", "urllib3", "matplotlib", "mlflow.store.db.utils")


class MaskSecrets(logging.Filter):
    """Mask passwords in URIs in every log line, ours and the libraries'."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_text(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def configure() -> MaskSecrets:
    """INFO and above to stderr, masked; returns the filter for other handlers to use."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    secrets = MaskSecrets()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(secrets)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return secrets
