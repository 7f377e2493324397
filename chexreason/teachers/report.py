"""What an API teacher run produced: per-case results, their counts, and the error a failed run raises."""

from __future__ import annotations

from dataclasses import dataclass, field


class TeacherError(RuntimeError):
    """A teacher could not do its job; the message says why and what to do.

    Attributes:
        report: the per-case report, when the run finished but some cases failed (`ApiTeacher.write`).
    """

    def __init__(self, message: str, report: TeacherReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class CaseResult:
    """What the teacher produced for one case.

    Attributes:
        id: the case id.
        reasoning: the trace's reasoning (the ``<think>`` text); None when the case failed.
        labels_match: the trace's labels are exactly the ground truth. False for a kept mismatch (the
            reasoning argues for other findings: drop it from SFT data) and for a failure.
        attempts: chat completions received for this case (paid for), retries of failed requests excluded.
        cached: read from the cache, not requested in this run.
        error: why the case failed, or why its last attempt was rejected; None when the trace was accepted.
        response: the raw text of the kept response (what the cache stores), for inspection.
    """

    id: str
    reasoning: str | None
    labels_match: bool
    attempts: int
    cached: bool = False
    error: str | None = None
    response: str | None = field(default=None, repr=False)

    @property
    def failed(self) -> bool:
        return self.reasoning is None


@dataclass(frozen=True)
class TeacherReport:
    """Per-case results of one run, in the order of the cases given, and the counts a caller checks.

    ``requested == cached + generated + failed``; ``mismatched`` counts cached and generated traces alike.
    """

    results: tuple[CaseResult, ...]

    @property
    def requested(self) -> int:
        return len(self.results)

    @property
    def cached(self) -> int:
        return sum(r.cached for r in self.results)

    @property
    def generated(self) -> int:
        return sum(not r.cached and not r.failed for r in self.results)

    @property
    def mismatched(self) -> int:
        return len(self.mismatched_ids)

    @property
    def failed(self) -> int:
        return len(self.failed_ids)

    @property
    def failed_ids(self) -> list[str]:
        return [r.id for r in self.results if r.failed]

    @property
    def mismatched_ids(self) -> list[str]:
        return [r.id for r in self.results if not r.failed and not r.labels_match]

    @property
    def reasonings(self) -> list[str | None]:
        return [r.reasoning for r in self.results]

    def summary(self) -> str:
        return (
            f"{self.requested} cases: {self.cached} cached, {self.generated} generated, "
            f"{self.mismatched} with mismatched labels, {self.failed} failed"
        )
