"""Turn mutmut's results into docs/mutation-report.md: per-module figures and every survivor.

Reads what ``mutmut run`` left in ``mutants/`` through mutmut's own command line
(``mutmut results --all true`` for the verdicts, ``mutmut show`` for a diff), so it
only depends on mutmut's public interface. Survivors that are equivalent mutants
(no test can tell them from the original) are explained in
``tools/mutation_equivalents.toml``, matched by function and mutated line (never by
mutant number, which changes whenever the function does).

Run from the project root after ``mutmut run`` (``make mutate`` does both)::

    python -m tools.mutation_report --seconds 1234 --out docs/mutation-report.md --fail-under 85
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

EQUIVALENTS = Path(__file__).with_name("mutation_equivalents.toml")
DEFAULT_OUT = Path("docs/mutation-report.md")
# mutmut marks a method as x«sep»Class«sep»method and a function as x_function.
_SEP = "ǁ"
_RESULT_RE = re.compile(r"^\s*(?P<name>\S+__mutmut_\d+): (?P<status>.+?)\s*$")
# Verdicts that mean a test noticed the mutant.
DETECTED = frozenset({"killed", "timeout", "caught by type check"})


@dataclass(frozen=True)
class Mutant:
    name: str  # e.g. edge_agent.messaging.outbox.xǁOutboxǁtake__mutmut_12
    status: str

    @property
    def mangled(self) -> str:
        return self.name.partition("__mutmut_")[0]

    @property
    def module(self) -> str:
        return self.mangled.rpartition(".")[0]

    @property
    def function(self) -> str:
        """Readable ``module.Class.method`` or ``module.function``."""
        func = self.mangled.rpartition(".")[2]
        if func.startswith("x" + _SEP):
            func = func[2:].replace(_SEP, ".")
        elif func.startswith("x_"):
            func = func[2:]
        return f"{self.module}.{func}"


@dataclass(frozen=True)
class Equivalent:
    """Why some survivors are equivalent mutants, and which ones.

    ``function`` is a glob on ``module.Class.function``. A survivor matches when its mutated
    line(s) equal ``mutated`` or match the regular expression ``mutated_pattern`` (when given),
    its original line(s) match the regular expression ``original`` (when given) and, with
    ``case_only``, the mutant changes nothing but letter case.
    """

    function: str
    why: str
    mutated: str | None = None
    mutated_pattern: str | None = None
    original: str | None = None
    case_only: bool = False

    def matches(self, mutant: Mutant, diff: str) -> bool:
        old, new = diff_lines(diff, "-"), diff_lines(diff, "+")
        return (
            fnmatch.fnmatchcase(mutant.function, self.function)
            and (self.mutated is None or self.mutated == new)
            and (self.mutated_pattern is None or re.search(self.mutated_pattern, new) is not None)
            and (self.original is None or re.search(self.original, old) is not None)
            and (not self.case_only or (old != new and old.lower() == new.lower()))
        )


@dataclass
class ModuleFigures:
    module: str
    statuses: Counter[str] = field(default_factory=Counter)
    equivalent: int = 0
    not_checked: int = 0  # mutants of a run restricted to some (MUTANTS=…), left out of every figure

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    @property
    def detected(self) -> int:
        return sum(n for status, n in self.statuses.items() if status in DETECTED)

    @property
    def survived(self) -> int:
        return self.total - self.detected

    def score(self) -> float:
        """Detected mutants over all mutants (equivalent ones count as survivors)."""
        return 100.0 * self.detected / self.total if self.total else 100.0

    def score_without_equivalents(self) -> float:
        """Detected over the mutants a test could detect: the figure the target applies to."""
        real = self.total - self.equivalent
        return 100.0 * self.detected / real if real else 100.0


def parse_results(text: str) -> list[Mutant]:
    """Mutants from ``mutmut results --all true`` output (one ``name: status`` per line)."""
    out = []
    for line in text.splitlines():
        match = _RESULT_RE.match(line)
        if match:
            out.append(Mutant(match["name"], match["status"]))
    return out


def diff_lines(diff: str, sign: str) -> str:
    """The "-" (original) or "+" (mutated) lines of a unified diff, stripped and joined."""
    header = sign * 3
    return "\n".join(
        line[1:].strip() for line in diff.splitlines() if line.startswith(sign) and not line.startswith(header)
    )


def load_equivalents(path: Path) -> list[Equivalent]:
    if not path.is_file():
        return []
    data = tomllib.loads(path.read_text())
    out = []
    for entry in data.get("equivalent", []):
        if not ({"mutated", "mutated_pattern", "original"} & set(entry)) and not entry.get("case_only"):
            raise SystemExit(f"{path}: an entry for {entry.get('function')} names no mutation")
        out.append(Equivalent(
            function=entry["function"], why=" ".join(entry["why"].split()),
            mutated=entry["mutated"].strip() if "mutated" in entry else None,
            mutated_pattern=entry.get("mutated_pattern"),
            original=entry.get("original"), case_only=bool(entry.get("case_only", False)),
        ))
    return out


def find_equivalent(mutant: Mutant, diff: str, equivalents: Iterable[Equivalent]) -> Equivalent | None:
    return next((eq for eq in equivalents if eq.matches(mutant, diff)), None)


def module_path(module: str) -> str:
    return module.replace(".", "/") + ".py"


def figures_by_module(mutants: Iterable[Mutant], equivalent_names: set[str]) -> list[ModuleFigures]:
    figures: dict[str, ModuleFigures] = {}
    for mutant in mutants:
        fig = figures.setdefault(mutant.module, ModuleFigures(mutant.module))
        if mutant.status == "not checked":
            fig.not_checked += 1
            continue
        fig.statuses[mutant.status] += 1
        if mutant.name in equivalent_names:
            fig.equivalent += 1
    return [figures[name] for name in sorted(figures)]


def _pct(value: float) -> str:
    return f"{value:.1f} %"


def render(
    figures: Sequence[ModuleFigures],
    survivors: Sequence[tuple[Mutant, str, Equivalent | None]],
    *,
    seconds: float | None,
    version: str,
    commit: str,
    generated: str,
) -> str:
    """The Markdown report."""
    total = ModuleFigures("total")
    for fig in figures:
        total.statuses.update(fig.statuses)
        total.equivalent += fig.equivalent
        total.not_checked += fig.not_checked
    lines = [
        "# Mutation testing report",
        "",
        f"Generated by `make mutate` ({version}) on {generated}, commit `{commit}`"
        + (f"; run time {seconds / 60:.1f} min with 2 workers." if seconds is not None else "."),
        "How the run is set up and what the figures mean: [testing.md](testing.md#mutation-testing).",
        "",
        "*Killed* counts mutants a test failed on (timeouts included); *equivalent* survivors behave",
        "exactly like the original code (explained below, from `tools/mutation_equivalents.toml`);",
        "the target, ≥ 85 %, applies to the last column: killed / (mutants − equivalent).",
        "",
        "| module | mutants | killed | survived | of which no tests | equivalent | score | without equivalents |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for fig in [*figures, total]:
        name = f"`{module_path(fig.module)}`" if fig is not total else "**total**"
        unchecked = f" (+{fig.not_checked} not checked)" if fig.not_checked else ""
        lines.append(
            f"| {name} | {fig.total}{unchecked} | {fig.detected} | {fig.survived} | {fig.statuses['no tests']} | "
            f"{fig.equivalent} | {_pct(fig.score())} | {_pct(fig.score_without_equivalents())} |"
        )
    unexplained = [s for s in survivors if s[2] is None]
    lines += ["", f"{len(survivors)} survivor(s): {len(survivors) - len(unexplained)} equivalent, "
              f"{len(unexplained)} not explained.", ""]
    by_module: dict[str, list[tuple[Mutant, str, Equivalent | None]]] = {}
    for entry in survivors:
        by_module.setdefault(entry[0].module, []).append(entry)
    for module in sorted(by_module):
        lines += [f"## `{module_path(module)}`", ""]
        for mutant, diff, eq in sorted(by_module[module], key=lambda e: _natural(e[0].name)):
            verdict = f"equivalent — {eq.why}" if eq else f"**{mutant.status}**, not explained"
            lines += [f"### `{mutant.name}`", "", verdict, "", "```diff", diff.strip(), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def _natural(name: str) -> tuple[str, int]:
    base, _, number = name.rpartition("__mutmut_")
    return base, int(number) if number.isdigit() else 0


def _run(cmd: Sequence[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return proc.stdout


def _diff_getter(mutmut: str) -> Callable[[str], str]:
    """A function giving a mutant's diff: mutmut's own, in-process when importable (fast)."""

    def via_cli(name: str) -> str:
        return _run([mutmut, "show", name]).split("\n", 1)[-1]

    try:
        from mutmut.mutation.diff_apply import get_diff_for_mutant
    except ImportError:
        return via_cli

    def in_process(name: str) -> str:
        try:
            return str(get_diff_for_mutant(name))
        except Exception:  # an internal API of mutmut: fall back to its command line
            return via_cli(name)

    return in_process


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown report to write")
    parser.add_argument("--seconds", type=float, default=None, help="wall time of the mutmut run")
    parser.add_argument("--fail-under", type=float, default=None,
                        help="exit 1 when a module's score without equivalents is below this percentage")
    parser.add_argument("--mutmut", default=shutil.which("mutmut") or str(Path(sys.executable).with_name("mutmut")),
                        help="mutmut executable")
    args = parser.parse_args(argv)

    mutants = parse_results(_run([args.mutmut, "results", "--all", "true"]))
    if not mutants:
        print("no mutmut results under mutants/; run `mutmut run` first", file=sys.stderr)
        return 2
    equivalents = load_equivalents(EQUIVALENTS)
    diff_of = _diff_getter(args.mutmut)
    survivors = []
    skipped = sum(1 for m in mutants if m.status == "not checked")
    for mutant in mutants:
        if mutant.status in DETECTED or mutant.status == "not checked":
            continue
        diff = diff_of(mutant.name)
        survivors.append((mutant, diff, find_equivalent(mutant, diff, equivalents)))
    figures = [f for f in figures_by_module(mutants, {m.name for m, _, eq in survivors if eq is not None})
               if f.total]  # a module none of whose mutants ran (MUTANTS=…) has no figures
    version = _run([args.mutmut, "--version"]).strip().replace(", version ", " ")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip() or "unknown"
    report = render(figures, survivors, seconds=args.seconds, version=version, commit=commit,
                    generated=dt.date.today().isoformat())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)

    width = max((len(module_path(f.module)) for f in figures), default=0)
    for fig in figures:
        print(f"{module_path(fig.module):<{width}}  {fig.detected:5d}/{fig.total:<5d} "
              f"{_pct(fig.score()):>8}  without equivalents {_pct(fig.score_without_equivalents()):>8}")
    if skipped:
        print(f"{skipped} mutant(s) not checked (left out of the figures)")
    print(f"report written to {args.out}")
    low = [f for f in figures if args.fail_under is not None and f.score_without_equivalents() < args.fail_under]
    if low:
        print(f"below {args.fail_under:g} %: {', '.join(module_path(f.module) for f in low)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
