"""The validation report: figures comparing the float and int8 models, as a table."""

from __future__ import annotations

import json
from typing import Any

from converter.safeguards import format_class_figures


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{100.0 * float(value):.2f} %"


def format_report(report: dict[str, Any]) -> str:
    """Render the headline figures of a report as a plain-text table."""
    latency = report.get("latency_ms", {})
    io = report.get("io", {})
    rows: list[tuple[str, str]] = [
        ("model", str(report.get("model", ""))),
        ("task", str(report.get("task", ""))),
        ("size float / int8", f"{report.get('size_float_bytes', 0):,} B / "
                              f"{report.get('size_int8_bytes', 0):,} B"),
        ("size ratio", _fmt(report.get("size_ratio"), 3)),
        ("top-1 agreement", _pct(report.get("top1_agreement"))),
        ("accuracy float", _pct(report.get("accuracy_float"))),
        ("accuracy int8", _pct(report.get("accuracy_int8"))),
        ("accuracy drop", "n/a" if report.get("accuracy_drop_pp") is None
         else f"{report['accuracy_drop_pp']:.2f} pp"),
        ("output cosine", _fmt(report.get("output_cosine"), 5)),
        ("int8 op coverage", _pct(report.get("int8_op_coverage"))),
        ("float ops", ", ".join(report.get("float_ops", [])) or "none"),
    ]
    rows.extend(_compression_rows(report.get("compression")))
    for side in ("input", "output"):
        spec = io.get(side, {})
        if spec:
            rows.append((f"{side} tensor", f"{spec.get('dtype')} {spec.get('shape')} "
                                           f"scale={spec.get('scale'):.6g} zero_point={spec.get('zero_point')}"))
    for kind in ("float", "int8"):
        per = latency.get(kind, {})
        if per:
            text = ", ".join(f"{threads} thr {ms:.3f} ms" for threads, ms in sorted(per.items()))
            rows.append((f"latency {kind}", text))
    rows.append(("calibration samples", str(report.get("calibration_samples"))))
    rows.append(("validation samples", f"{report.get('validation_samples')} "
                                       f"({report.get('validation_source', '')})"))
    versions = report.get("versions", {})
    if versions:
        rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    width = max(len(name) for name, _ in rows)
    line = "-" * (width + 2 + max(len(v) for _, v in rows))
    body = "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)
    classes = format_class_figures(report)
    table = f"{line}\n{body}\n{line}" + (f"\n{classes}\n{line}" if classes else "")
    if "ladder" in report:
        from converter.ladder import format_ladder

        table += "\n" + format_ladder(report["ladder"])
    return table


def _compression_rows(section: Any) -> list[tuple[str, str]]:
    """Side-by-side rows for the ``compression`` section (QAT/pruning/distillation)."""
    if not isinstance(section, dict):
        return []
    mode = section.get("mode")
    names = {"ptq": "plain PTQ int8", "equalized_ptq": "equalised PTQ int8", "qat": "QAT int8",
             "prune": "pruned int8", "teacher": "teacher float",
             "student_float": "student float", "distill": "student int8"}
    rows: list[tuple[str, str]] = []
    for key, name in names.items():
        fig = section.get(key)
        if isinstance(fig, dict):
            params = f", {fig['params']:,} params" if fig.get("params") else ""
            rows.append((name, f"accuracy {_pct(fig.get('accuracy'))}, agreement {_pct(fig.get('top1_agreement'))}, "
                               f"{fig.get('size_bytes', 0):,} B (gzip {fig.get('gzip_bytes', 0):,} B), "
                               f"{_fmt(fig.get('latency_ms_1_thread'), 3)} ms{params}"))
    if mode == "prune":
        rows.append(("sparsity", f"{_pct(section.get('sparsity'))} (gzip {_pct(section.get('gzip_reduction_vs_ptq'))} "
                                 "smaller than unpruned int8)"))
    return rows


def report_json(report: dict[str, Any]) -> bytes:
    """The report as stable, indented JSON bytes (for report.json and --report)."""
    return (json.dumps(report, indent=2, sort_keys=True) + "\n").encode()
