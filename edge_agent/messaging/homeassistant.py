"""Home Assistant MQTT discovery: retained sensor configs under ``homeassistant/…``.

Availability is bound to the device's ``…/status`` topic; the sensors read the health message.
"""

from __future__ import annotations

from typing import Any

from edge_agent import __version__

HA_SENSORS = (
    # object id, name, template over the health payload, unit
    ("fps", "Inference fps", "{{ value_json.fps_inferred }}", "fps"),
    ("invoke_p95", "Inference p95", "{{ value_json.latency_ms.invoke.p95 }}", "ms"),
    ("cpu_temp", "CPU temperature", "{{ value_json.cpu_temp_c }}", "°C"),
    ("outbox_depth", "Outbox depth", "{{ value_json.outbox.depth }}", None),
)


def homeassistant_discovery(device_id: str, root: str) -> list[tuple[str, dict[str, Any]]]:
    """Retained Home Assistant discovery configs; availability bound to ``…/status``."""
    device = {"identifiers": [f"edge_{device_id}"], "name": device_id, "sw_version": __version__,
              "manufacturer": "edge-infer"}
    availability = {"topic": f"{root}/status", "value_template": "{{ value_json.state }}",
                    "payload_available": "online", "payload_not_available": "offline"}
    out: list[tuple[str, dict[str, Any]]] = []
    for object_id, name, template, unit in HA_SENSORS:
        config: dict[str, Any] = {
            "name": name, "unique_id": f"edge_{device_id}_{object_id}", "state_topic": f"{root}/health",
            "value_template": template, "availability": [availability], "device": device,
        }
        if unit:
            config["unit_of_measurement"] = unit
        out.append((f"homeassistant/sensor/{device_id}/{object_id}/config", config))
    return out
