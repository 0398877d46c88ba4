"""What ``live`` asks of MLflow: which version an alias names, that version loaded, its tags,
and a run whose metrics wait in an outbox while the tracking store cannot be reached.

Predictions never wait for MLflow: a metric point, tag or version tag that cannot be sent is
kept (in order) and sent with the next one that can, so nothing is lost while the store is
down for a while; one warning per outage, one line when it is back.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tfi.core.errors import StageError
from tfi.runtime.uris import mask_text
from tfi.tracking.loaded_models import ServedModel

log = logging.getLogger(__name__)

_BATCH = 900  # MLflow takes at most 1,000 metrics per batch


def alias_version(model_name: str, alias: str) -> str | None:
    """The version ``alias`` names, None when it names none (or its version is gone)."""
    client = MlflowClient()
    try:
        version = client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None
    if version.current_stage == "Deleted_Internal":  # deleted, alias left behind
        return None
    return str(version.version)


def load_version(model_name: str, version: str) -> ServedModel:
    """One version, pinned by number: an alias that moves meanwhile does not change it."""
    return ServedModel(f"models:/{model_name}/{version}")


def version_tags(model_name: str, version: str) -> dict[str, str]:
    try:
        return dict(MlflowClient().get_model_version(model_name, version).tags)
    except MlflowException as exc:
        raise StageError(f"model {model_name} v{version}: {exc.message}") from None


@dataclass
class Outbox:
    """A live run's metrics and tags, sent in order by a background thread (so a slow or
    unreachable store never holds a bar back), kept while the store cannot be reached."""

    run_id: str
    model_name: str
    metrics: list[Metric] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    version_tags: dict[str, dict[str, str]] = field(default_factory=dict)
    down_since: str | None = None  # what the first failed send said
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sender: threading.Thread | None = None

    def add_point(self, values: Mapping[str, float], step: int, timestamp_ms: int) -> None:
        points = [
            Metric(key, float(value), timestamp_ms, step)
            for key, value in values.items()
            if math.isfinite(value)
        ]
        with self._lock:
            self.metrics.extend(points)

    def tag(self, tags: Mapping[str, str]) -> None:
        with self._lock:
            self.tags.update({key: str(value) for key, value in tags.items()})

    def tag_version(self, version: str, tags: Mapping[str, str]) -> None:
        with self._lock:
            self.version_tags.setdefault(version, {}).update(tags)

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self.metrics) + len(self.tags) + len(self.version_tags)

    def kick(self) -> None:
        """Send what waits in the background, unless a send is already under way."""
        if self._sender is not None and self._sender.is_alive():
            return
        self._sender = threading.Thread(target=self.send, name="tfi-live-outbox", daemon=True)
        self._sender.start()

    def close(self, timeout: float = 30.0) -> bool:
        """The last send, in this thread, after the one under way (if that ends within
        ``timeout``: a store that hangs must not hold the end of the run); False if anything
        stays unsent."""
        if self._sender is not None:
            self._sender.join(timeout)
            if self._sender.is_alive():
                return False
        return self.send() and self.waiting == 0

    def send(self) -> bool:
        """Send what waits; False (and everything kept) if the store cannot be reached."""
        client = MlflowClient()
        try:
            while True:
                with self._lock:
                    batch = self.metrics[:_BATCH]
                if not batch:
                    break
                client.log_batch(self.run_id, metrics=batch)
                with self._lock:
                    del self.metrics[: len(batch)]
            with self._lock:
                tags = dict(self.tags)
            if tags:
                client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
                with self._lock:
                    for key, value in tags.items():
                        if self.tags.get(key) == value:
                            del self.tags[key]
            with self._lock:
                versions = {v: dict(t) for v, t in self.version_tags.items()}
            for version, pairs in versions.items():
                try:
                    for key, value in pairs.items():
                        client.set_model_version_tag(self.model_name, version, key, value)
                except MlflowException as exc:
                    if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                        raise
                    log.warning(
                        "live: %s v%s was deleted: its live record is not kept", self.model_name,
                        version,
                    )  # fmt: skip
                with self._lock:
                    if self.version_tags.get(version) == pairs:
                        del self.version_tags[version]
        except Exception as exc:  # SQLAlchemy, requests and MLflow raise many kinds
            if self.down_since is None:
                self.down_since = mask_text(str(exc)).splitlines()[0][:300]
                log.warning(
                    "live: the tracking store cannot be reached (%s); predictions go on being "
                    "written, %d metric points and tags wait to be sent",
                    self.down_since,
                    self.waiting,
                )
            return False
        if self.down_since is not None:
            log.info("live: the tracking store is back; what waited was sent")
            self.down_since = None
        return True
