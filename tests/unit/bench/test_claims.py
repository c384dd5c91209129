"""The README's benchmark figures equal the saved results in docs/bench-results."""

from __future__ import annotations

import json
from pathlib import Path

from bench.common import ROOT, check_claims, find_claims


def _results(tmp_path: Path, figures: dict[str, float]) -> Path:
    (tmp_path / "agent_pipeline.json").write_text(json.dumps({"figures": figures}))
    return tmp_path


def test_readme_figures_match_saved_results() -> None:
    readme = (ROOT / "README.md").read_text()
    claims = find_claims(readme)
    assert len(claims) >= 3, "the README should quote its benchmark figures with <!-- bench:NAME.KEY --> markers"
    assert check_claims(readme) == []


def test_claim_matches_when_rounded_as_shown(tmp_path: Path) -> None:
    results = _results(tmp_path, {"digits_peak_rss_mb": 73.62, "throughput_ratio_t1": 0.987})
    text = ("peak RSS **73.6 MB**<!-- bench:agent_pipeline.digits_peak_rss_mb -->, ratio "
            "0.99<!-- bench:agent_pipeline.throughput_ratio_t1 -->, "
            "about 74 MB<!-- bench:agent_pipeline.digits_peak_rss_mb -->")
    assert [c.quoted for c in find_claims(text)] == ["73.6", "0.99", "74"]
    assert check_claims(text, results) == []


def test_wrong_figure_is_reported(tmp_path: Path) -> None:
    results = _results(tmp_path, {"digits_peak_rss_mb": 81.2})
    problems = check_claims("under **73.6 MB**<!-- bench:agent_pipeline.digits_peak_rss_mb -->", results)
    assert problems == ["agent_pipeline.digits_peak_rss_mb: README says 73.6, agent_pipeline.json has 81.2"]


def test_unknown_key_missing_file_and_bare_marker_are_reported(tmp_path: Path) -> None:
    results = _results(tmp_path, {"digits_peak_rss_mb": 73.6})
    text = ("1.0<!-- bench:agent_pipeline.no_such_key --> 2.0<!-- bench:no_such_bench.x --> "
            "none <!-- bench:agent_pipeline.digits_peak_rss_mb -->")
    problems = check_claims(text, results)
    assert "1 bench marker(s) not preceded by a number" in problems
    assert "agent_pipeline.no_such_key: not in agent_pipeline.json" in problems
    assert "no_such_bench.x: no no_such_bench.json" in problems
    assert len(problems) == 3
