"""Every metric the roles export has its row in docs/operations.rst: the names are a contract for dashboards."""

from __future__ import annotations

from pathlib import Path

from twisted_sipnat.service.figures import METRICS

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.rst"


def test_everyMetricHasARowInTheOperationsPage() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    missing = [name for name in METRICS if f"   * - ``{name}``" not in text]
    assert missing == [], f"metrics without a row in {OPERATIONS.name}: {missing}"
