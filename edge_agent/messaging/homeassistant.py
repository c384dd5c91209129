"""Home Assistant MQTT discovery: retained configs under ``homeassistant/<component>/<device_id>/…``.

- Health sensors read ``…/health``; they carry ``expire_after`` = ceil(2.5 × the health interval),
  so Home Assistant marks them unavailable when health stops (a frozen device: the staleness rule).
- Result sensors read ``…/evt/<type>`` of the running task: the latest label and its score; for
  detection also the number of detections of each label; and a ``binary_sensor`` per label (the
  first :data:`MAX_LABELS` labels of the model) that is ``ON`` while the label is in the results.
- Every entity's availability is the device's ``…/status`` (``online``/``offline``, the will).

Object ids are ``[a-z0-9_]`` (a label that is not gets a short hash), so a label can never add
a topic level or a wildcard. :func:`homeassistant_discovery` is pure; the MQTT publisher sends
its output after every connect and again when it changes (a model swap, a new health interval),
and removes configs no longer in it with an empty retained message.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from edge_agent import __version__

STALE_FACTOR = 2.5  # health silent this many intervals: stale (docs/mqtt.md, deploy/fleet_state.py)
MAX_LABELS = 32  # per-label entities for at most this many labels (the model's first ones)
DEFAULT_HEALTH_INTERVAL_S = 30.0
EVENT_OFF_DELAY_S = 5  # binary sensors of results that never say "absent" (audio events)
COMPONENTS = ("sensor", "binary_sensor")

# The result topic of each task (edge_agent/tasks: ClassifyTask, DetectTask, AudioTask).
EVENT_TYPES = {"classify": "classification", "detect": "detection", "audio_classify": "audio"}

# object id, name, template over the health body, extra config
HEALTH_SENSORS: tuple[tuple[str, str, str, dict[str, Any]], ...] = (
    ("fps", "Inference fps", "{{ value_json.fps_inferred }}",
     {"unit_of_measurement": "fps", "state_class": "measurement", "suggested_display_precision": 1}),
    ("invoke_p95", "Inference p95", "{{ value_json.latency_ms.invoke.p95 }}",
     {"device_class": "duration", "unit_of_measurement": "ms", "state_class": "measurement"}),
    ("cpu_temp", "CPU temperature", "{{ value_json.cpu_temp_c }}",
     {"device_class": "temperature", "unit_of_measurement": "°C", "state_class": "measurement"}),
    ("cpu", "CPU", "{{ value_json.cpu_percent }}",
     {"unit_of_measurement": "%", "state_class": "measurement", "icon": "mdi:cpu-64-bit"}),
    ("memory_rss", "Agent memory", "{{ value_json.mem.rss_bytes }}",
     {"device_class": "data_size", "unit_of_measurement": "B", "state_class": "measurement",
      "entity_category": "diagnostic"}),
    ("disk_free", "Disk free", "{{ value_json.disk_free_bytes }}",
     {"device_class": "data_size", "unit_of_measurement": "B", "state_class": "measurement",
      "entity_category": "diagnostic"}),
    ("outbox_depth", "Outbox depth", "{{ value_json.outbox.depth }}",
     {"unit_of_measurement": "messages", "state_class": "measurement", "entity_category": "diagnostic"}),
    ("frames_dropped", "Frames dropped", "{{ value_json.frames_dropped }}",
     {"state_class": "total_increasing", "entity_category": "diagnostic"}),
    ("reconnects", "Broker reconnects", "{{ value_json.reconnects }}",
     {"state_class": "total_increasing", "entity_category": "diagnostic"}),
    ("uptime", "Agent uptime", "{{ value_json.uptime_s }}",
     {"device_class": "duration", "unit_of_measurement": "s", "entity_category": "diagnostic"}),
)
HEALTH_BINARY_SENSORS: tuple[tuple[str, str, str, dict[str, Any]], ...] = (
    ("throttled", "Throttled",
     "{{ 'ON' if value_json.throttled and (value_json.throttled.throttled or value_json.throttled.undervoltage"
     " or value_json.throttled.freq_capped or value_json.throttled.soft_temp_limit) else 'OFF' }}",
     {"device_class": "problem", "entity_category": "diagnostic"}),
    ("duplicate_device_id", "Duplicate device id",
     "{{ 'ON' if value_json.duplicate_device_id else 'OFF' }}",
     {"device_class": "problem", "entity_category": "diagnostic"}),
)
# Kept for the ACL test and older callers: the health sensors' object ids.
HA_SENSORS = tuple((oid, name, template, extra.get("unit_of_measurement")) for oid, name, template, extra
                   in HEALTH_SENSORS)

_SAFE = re.compile(r"[^a-z0-9]+")


def object_id(label: str) -> str:
    """``[a-z0-9_]`` id of a label: its slug, plus a short hash when the slug is not the label itself."""
    slug = _SAFE.sub("_", label.lower()).strip("_")[:40]
    if slug and slug == label:
        return slug
    return f"{slug or 'label'}_{hashlib.sha256(label.encode()).hexdigest()[:6]}"


def _quote(label: str) -> str:
    """A label as a Jinja string literal (JSON escaping is valid Jinja string syntax)."""
    return json.dumps(label)


@dataclass(frozen=True)
class DiscoveryModel:
    """What the discovery depends on besides the device id: the running model and settings."""

    task: str | None = None  # manifest task: classify, detect, audio_classify
    labels: tuple[str, ...] = ()
    health_interval_s: float = DEFAULT_HEALTH_INTERVAL_S
    events: str = "change"  # the events policy: every, change, interval:S
    model_name: str | None = None  # shown as the device's model

    @property
    def event_type(self) -> str | None:
        return EVENT_TYPES.get(self.task or "")

    @property
    def expire_after(self) -> int:
        return max(1, math.ceil(STALE_FACTOR * self.health_interval_s))

    def off_delay(self) -> int | None:
        """How long a label's binary sensor stays ``ON`` without a new result naming it.

        ``change`` (the default policy) sends a result whenever the set of labels changes, so
        ``OFF`` comes from the message without the label and no delay is set (a delay would switch
        off an object that is still there). Audio events never say "absent": a fixed delay.
        ``every`` and ``interval:S``: 2.5 × the time between results (at least 5 s).
        """
        if self.task == "audio_classify":
            return EVENT_OFF_DELAY_S
        if self.events.startswith("interval:"):
            try:
                seconds = float(self.events.partition(":")[2])
            except ValueError:
                seconds = 0.0
            return max(EVENT_OFF_DELAY_S, math.ceil(STALE_FACTOR * seconds))
        if self.events == "every":
            return EVENT_OFF_DELAY_S
        return None


def _result_templates(event_type: str) -> tuple[str, str]:
    """(latest label, latest score) templates over a result body of ``event_type``."""
    if event_type == "detection":
        best = "{% set d = value_json.detections | sort(attribute='score', reverse=true) | first %}"
        return (best + "{{ d.label if d else 'none' }}", best + "{{ d.score if d else 0 }}")
    if event_type == "audio":  # a spoken word has `label`; window mode only `classes`
        return ("{{ value_json.label if value_json.label is defined else "
                "(value_json.classes[0].label if value_json.classes else 'none') }}",
                "{{ value_json.classes[0].score if value_json.classes else 0 }}")
    return ("{{ value_json.classes[0].label if value_json.classes else 'none' }}",
            "{{ value_json.classes[0].score if value_json.classes else 0 }}")


def _present_template(event_type: str, label: str) -> str:
    """``ON`` when ``label`` is in a result body of ``event_type``, else ``OFF``."""
    q = _quote(label)
    in_classes = f"{{{{ 'ON' if value_json.classes | selectattr('label', 'eq', {q}) | list else 'OFF' }}}}"
    if event_type == "audio":
        return (f"{{% if value_json.label is defined %}}{{{{ 'ON' if value_json.label == {q} else 'OFF' }}}}"
                f"{{% else %}}{in_classes}{{% endif %}}")
    key = "detections" if event_type == "detection" else "classes"
    return f"{{{{ 'ON' if value_json.{key} | selectattr('label', 'eq', {q}) | list else 'OFF' }}}}"


def homeassistant_discovery(device_id: str, root: str,
                            model: DiscoveryModel | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Retained discovery configs ``(topic, config)``: health always, results when the task is known."""
    model = model or DiscoveryModel()
    device = {"identifiers": [f"edge_{device_id}"], "name": device_id, "sw_version": __version__,
              "manufacturer": "edge-infer", **({"model": model.model_name} if model.model_name else {})}
    availability = {"topic": f"{root}/status", "value_template": "{{ value_json.state }}",
                    "payload_available": "online", "payload_not_available": "offline"}
    common = {"availability": [availability], "availability_mode": "all", "device": device,
              "origin": {"name": "edge-infer", "sw_version": __version__}}
    out: list[tuple[str, dict[str, Any]]] = []

    def add(component: str, oid: str, name: str, topic: str, template: str, extra: dict[str, Any]) -> None:
        config = {"name": name, "unique_id": f"edge_{device_id}_{oid}", "state_topic": topic,
                  "value_template": template, **extra, **common}
        out.append((f"homeassistant/{component}/{device_id}/{oid}/config", config))

    health = {"expire_after": model.expire_after}
    for oid, name, template, extra in HEALTH_SENSORS:
        add("sensor", oid, name, f"{root}/health", template, {**extra, **health})
    for oid, name, template, extra in HEALTH_BINARY_SENSORS:
        add("binary_sensor", oid, name, f"{root}/health", template, {**extra, **health})
    event_type = model.event_type
    if event_type is None:
        return out
    topic = f"{root}/evt/{event_type}"
    label_t, score_t = _result_templates(event_type)
    add("sensor", "last_label", "Latest label", topic, label_t, {"icon": "mdi:tag"})
    add("sensor", "last_score", "Latest score", topic, score_t,
        {"state_class": "measurement", "suggested_display_precision": 2})
    if event_type == "detection":
        add("sensor", "detections", "Detections", topic, "{{ value_json.detections | count }}",
            {"state_class": "measurement", "unit_of_measurement": "objects"})
    off_delay = model.off_delay()
    seen: set[str] = set()
    for label in model.labels[:MAX_LABELS]:
        oid = object_id(label)
        if oid in seen:
            continue
        seen.add(oid)
        if event_type == "detection":
            add("sensor", f"count_{oid}", f"{label} count", topic,
                f"{{{{ value_json.detections | selectattr('label', 'eq', {_quote(label)}) | list | count }}}}",
                {"state_class": "measurement", "unit_of_measurement": "objects"})
        binary: dict[str, Any] = {"payload_on": "ON", "payload_off": "OFF"}
        if off_delay is not None:
            binary["off_delay"] = off_delay
        add("binary_sensor", f"detected_{oid}", f"{label} detected", topic, _present_template(event_type, label),
            binary)
    return out
