"""What happened to the data (counts for the `data:` line, preview and the preflight), and the data error."""

from __future__ import annotations

from dataclasses import dataclass, field

from finetune.config import UserError


class DataError(UserError, ValueError):
    """Bad input data: names the file, line and field, and the fix."""


@dataclass
class Stats:
    """What happened to the data, for the start-of-run report, preview and the preflight."""

    records: int = 0  # raw records read
    examples: int = 0  # tokenized examples kept (train + eval)
    eval_examples: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> records skipped (data.invalid=skip)
    dropped_too_long: int = 0
    truncated_turns: int = 0  # later turns dropped to fit; every kept answer keeps its EOS
    cut: int = 0  # the first answer itself cut at max_length: that example has no EOS to learn
    chunked: int = 0  # raw-text documents split into max_length pieces
    lengths: list[int] = field(default_factory=list)  # tokens per kept example
    cache: str = "off"  # hit | miss | off
    cache_dir: str = ""

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n

    def summary(self) -> str:
        n = sorted(self.lengths) or [0]
        skipped = "; ".join(f"{v} skipped: {k}" for k, v in self.skipped.items())
        return (
            f"{self.examples} examples ({self.eval_examples} eval) from {self.records} records"
            + (f" ({skipped})" if skipped else "")
            + f"; too long: {self.dropped_too_long} dropped, {self.truncated_turns} cut at a turn boundary, "
            f"{self.cut} answers cut (EOS lost), {self.chunked} documents chunked; tokens per example: "
            f"min {n[0]}, median {n[len(n) // 2]}, p95 {n[int(0.95 * (len(n) - 1))]}, max {n[-1]}; "
            f"tokenized cache: {self.cache}"
        )
