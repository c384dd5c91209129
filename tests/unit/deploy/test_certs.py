"""Certificate names are MQTT topic levels: the device id check must take the whole name."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.certs import CertError, create_ca, issue


@pytest.mark.parametrize("name", ["cam-1\n", "cam/1", "", "-cam", "c" * 65, "cam 1"])
def test_issue_refuses_names_that_are_not_one_topic_level(tmp_path: Path, name: str) -> None:
    create_ca(tmp_path)
    with pytest.raises(CertError, match="invalid name"):
        issue(tmp_path, name)  # a trailing newline once passed `match` with `$`


def test_issue_accepts_a_device_id(tmp_path: Path) -> None:
    create_ca(tmp_path)
    pair = issue(tmp_path, "cam-1.lab_2")
    assert pair.cert.is_file() and pair.key.is_file()
