"""Verdicts: each paper claim (§5.1-§5.4) judged by the bootstrap interval of the figure that tests it.

A claim is stated as "figure > 0" (sign +1) or "figure < 0" (sign -1), the figure being a paired
difference on the same edits or samples (stats). The interval decides, not the point estimate:

    reproduced       the 95% interval excludes 0 on the paper's side
    not reproduced   it excludes 0 on the other side
    inconclusive     it contains 0 (or could not be computed)

Every experiment returns its claims in results["claims"]; report.md ends with all of them.
"""
from __future__ import annotations

from hywu_core.experiments.stats import Interval

VERDICTS = ("reproduced", "not reproduced", "inconclusive")


def verdict(interval: Interval, sign: int = 1) -> str:
    """The verdict on a figure the paper says is > 0 (sign +1) or < 0 (sign -1)."""
    low, high = (interval.low, interval.high) if sign > 0 else (-interval.high, -interval.low)
    if low != low or high != high:   # nan: no resample could compute it
        return "inconclusive"
    return "reproduced" if low > 0 else "not reproduced" if high < 0 else "inconclusive"


def claim(section: str, paper: str, figure: str, interval: Interval, sign: int = 1, spec: str = "+.3f") -> dict:
    """One claim as a JSON-ready record: where in the paper, what it says (our words), the figure
    that tests it, its interval and the verdict."""
    return {"section": section, "paper": paper, "figure": figure, "sign": sign, "interval": interval.as_dict(),
            "text": interval.text(spec), "verdict": verdict(interval, sign)}


def line(record: dict) -> str:
    """A claim as one line of the report's Verdicts section."""
    side = ">" if record["sign"] > 0 else "<"
    return (f"- **{record['verdict']}** · {record['section']}: {record['paper']} — {record['figure']} {side} 0: "
            f"{record['text']} (95% CI, n = {record['interval']['n']})")


def section(claims: list[dict]) -> str:
    """The report's closing section: one line per claim, and the tally."""
    tally = ", ".join(f"{sum(c['verdict'] == v for c in claims)} {v}" for v in VERDICTS)
    return "\n".join(["## Verdicts", "",
                      "Each line: the verdict, the paper's claim in our words, the figure that tests it (a paired "
                      "difference; the claim holds when it is on the stated side of 0), its estimate and "
                      "bootstrap 95% interval. Reproduced / not reproduced: the interval excludes 0 on the "
                      "paper's / the other side; inconclusive: it contains 0.", "", *map(line, claims), "",
                      f"Tally: {tally}."])
