"""Home Assistant discovery configs: entities, units, availability, and their templates rendered
with Jinja2 (the template language Home Assistant uses) against result and health bodies."""

from __future__ import annotations

import json
import re

import jinja2
import pytest

from edge_agent.messaging.homeassistant import (
    MAX_LABELS,
    DiscoveryModel,
    homeassistant_discovery,
    object_id,
)

ROOT = "edge/v1/cam-01"
ENV = jinja2.Environment(undefined=jinja2.Undefined)


def render(template: str, body: dict) -> str:
    return ENV.from_string(template).render(value_json=body).strip()


def configs(model: DiscoveryModel | None = None) -> dict[str, dict]:
    return {topic: config for topic, config in homeassistant_discovery("cam-01", ROOT, model)}


def by_id(model: DiscoveryModel | None = None) -> dict[str, dict]:
    return {c["unique_id"].removeprefix("edge_cam-01_"): c for c in configs(model).values()}


HEALTH = {"fps_inferred": 9.5, "latency_ms": {"invoke": {"p50": 3.0, "p95": 4.25}}, "cpu_temp_c": 51.2,
          "cpu_percent": 12.5, "mem": {"rss_bytes": 123456}, "disk_free_bytes": 10**9, "outbox": {"depth": 3},
          "frames_dropped": 2, "reconnects": 1, "uptime_s": 12.3, "throttled": None,
          "duplicate_device_id": False}


def test_every_topic_is_a_config_under_the_devices_node_id() -> None:
    model = DiscoveryModel(task="detect", labels=("person", "car"))
    for topic in configs(model):
        assert re.fullmatch(r"homeassistant/(sensor|binary_sensor)/cam-01/[a-z0-9_]+/config", topic), topic


def test_health_entities_have_units_classes_and_expire_after_the_staleness_limit() -> None:
    entities = by_id(DiscoveryModel(health_interval_s=4.0))
    temp = entities["cpu_temp"]
    assert (temp["device_class"], temp["unit_of_measurement"], temp["state_class"]) == \
        ("temperature", "°C", "measurement")
    p95 = entities["invoke_p95"]
    assert (p95["device_class"], p95["unit_of_measurement"], p95["state_class"]) == ("duration", "ms", "measurement")
    assert entities["fps"]["unit_of_measurement"] == "fps"
    assert entities["outbox_depth"]["state_class"] == "measurement"
    assert entities["reconnects"]["state_class"] == "total_increasing"
    for oid in ("fps", "invoke_p95", "cpu_temp", "outbox_depth", "duplicate_device_id", "throttled"):
        assert entities[oid]["state_topic"] == f"{ROOT}/health"
        assert entities[oid]["expire_after"] == 10  # ceil(2.5 x 4 s)
    assert by_id(DiscoveryModel(health_interval_s=0.3))["fps"]["expire_after"] == 1


def test_availability_is_the_status_topic_for_every_entity() -> None:
    for config in configs(DiscoveryModel(task="classify", labels=("a",))).values():
        assert config["availability"] == [{"topic": f"{ROOT}/status", "value_template": "{{ value_json.state }}",
                                           "payload_available": "online", "payload_not_available": "offline"}]
        assert config["availability_mode"] == "all"
        assert render(config["availability"][0]["value_template"], {"state": "online"}) == "online"


def test_health_templates_render_the_health_body() -> None:
    entities = by_id()
    values = {oid: render(c["value_template"], HEALTH) for oid, c in entities.items()}
    assert values["fps"] == "9.5" and values["invoke_p95"] == "4.25" and values["cpu_temp"] == "51.2"
    assert values["outbox_depth"] == "3" and values["memory_rss"] == "123456"
    assert values["throttled"] == "OFF" and values["duplicate_device_id"] == "OFF"
    hot = {**HEALTH, "throttled": {"throttled": True, "undervoltage": False}, "duplicate_device_id": True,
           "cpu_temp_c": None}
    assert render(entities["throttled"]["value_template"], hot) == "ON"
    assert render(entities["duplicate_device_id"]["value_template"], hot) == "ON"
    assert render(entities["cpu_temp"]["value_template"], hot) == "None"  # Home Assistant's "unknown"


def test_no_result_entities_without_a_known_task() -> None:
    assert not any(t.startswith("homeassistant/binary_sensor/cam-01/detected_") for t in configs())
    assert "last_label" not in by_id()


def test_classification_results() -> None:
    entities = by_id(DiscoveryModel(task="classify", labels=("red", "green", "blue"), events="every"))
    body = {"frame": 3, "classes": [{"label": "green", "score": 0.875}, {"label": "red", "score": 0.1}]}
    assert entities["last_label"]["state_topic"] == f"{ROOT}/evt/classification"
    assert render(entities["last_label"]["value_template"], body) == "green"
    assert render(entities["last_score"]["value_template"], body) == "0.875"
    assert render(entities["last_label"]["value_template"], {"classes": []}) == "none"
    assert render(entities["detected_green"]["value_template"], body) == "ON"
    assert render(entities["detected_red"]["value_template"], body) == "ON"
    assert render(entities["detected_blue"]["value_template"], body) == "OFF"
    assert entities["detected_blue"]["off_delay"] == 5
    assert "count_red" not in entities  # counts are for detections


def test_detection_results_count_each_label() -> None:
    entities = by_id(DiscoveryModel(task="detect", labels=("person", "car", "dog")))
    body = {"detections": [{"label": "car", "score": 0.6, "box": [0, 0, 1, 1]},
                           {"label": "person", "score": 0.9, "box": [0, 0, 1, 1]},
                           {"label": "person", "score": 0.7, "box": [0, 0, 1, 1]}]}
    assert render(entities["last_label"]["value_template"], body) == "person"  # the best score
    assert render(entities["last_score"]["value_template"], body) == "0.9"
    assert render(entities["detections"]["value_template"], body) == "3"
    assert render(entities["count_person"]["value_template"], body) == "2"
    assert render(entities["count_dog"]["value_template"], body) == "0"
    assert render(entities["detected_car"]["value_template"], body) == "ON"
    assert render(entities["detected_dog"]["value_template"], body) == "OFF"
    assert render(entities["last_label"]["value_template"], {"detections": []}) == "none"
    assert entities["count_car"]["state_class"] == "measurement"
    # `change` (default): a result comes when the set of labels changes, OFF with it: no off_delay
    assert "off_delay" not in entities["detected_car"]
    assert by_id(DiscoveryModel(task="detect", labels=("car",), events="interval:4"))["detected_car"]["off_delay"] == 10


def test_audio_words_and_windows() -> None:
    entities = by_id(DiscoveryModel(task="audio_classify", labels=("yes", "no", "_silence_")))
    word = {"label": "yes", "t_start_s": 1.0,
            "classes": [{"label": "yes", "score": 0.8}, {"label": "no", "score": 0.1}]}
    window = {"t_start_s": 1.0, "classes": [{"label": "no", "score": 0.7}]}
    assert entities["last_label"]["state_topic"] == f"{ROOT}/evt/audio"
    assert render(entities["last_label"]["value_template"], word) == "yes"
    assert render(entities["last_label"]["value_template"], window) == "no"
    assert render(entities["detected_yes"]["value_template"], word) == "ON"
    assert render(entities["detected_no"]["value_template"], word) == "OFF"  # ranked, but not the word
    assert render(entities["detected_no"]["value_template"], window) == "ON"
    assert entities["detected_yes"]["off_delay"] == 5  # events never say "absent"


def test_hostile_labels_stay_one_topic_level_and_a_quoted_string() -> None:
    labels = ("a/b", "#", "+", "x' ~ 7 ~ '", 'q"uote', "Ünïcode label", "", "a b", "a_b", "a}}b", "{% raw %}")
    model = DiscoveryModel(task="detect", labels=labels)
    topics = list(configs(model))
    assert len(topics) == len(set(topics))
    assert all(t.count("/") == 4 and "#" not in t and "+" not in t for t in topics)
    entities = by_id(model)
    for label in labels:
        body = {"detections": [{"label": label, "score": 0.5}]}
        assert render(entities[f"count_{object_id(label)}"]["value_template"], body) == "1"
        assert render(entities[f"detected_{object_id(label)}"]["value_template"], {"detections": []}) == "OFF"
    assert object_id("person") == "person" and object_id("a b") != object_id("a_b")


def test_per_label_entities_are_bounded() -> None:
    labels = tuple(f"l{i}" for i in range(MAX_LABELS + 20))
    entities = by_id(DiscoveryModel(task="detect", labels=labels))
    assert sum(oid.startswith("detected_") for oid in entities) == MAX_LABELS
    assert f"detected_l{MAX_LABELS - 1}" in entities and f"detected_l{MAX_LABELS}" not in entities


@pytest.mark.parametrize("task", [None, "classify", "detect", "audio_classify"])
def test_configs_are_json(task: str | None) -> None:
    for config in configs(DiscoveryModel(task=task, labels=("a",))).values():
        assert json.loads(json.dumps(config)) == config
