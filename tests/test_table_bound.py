"""A question/answer table's conversion is bounded by what it becomes: a table of tiny rows that would grow past the
limit as chat JSONL stops converting there, and the check says why, before anything is written."""

from __future__ import annotations

from dataset_rules.check import convert_table


def _tiny_rows(count: int) -> bytes:
    return ("question,answer\n" + "".join(f"q{i},a{i}\n" for i in range(count))).encode()


def test_a_table_of_tiny_rows_stops_at_its_converted_limit() -> None:
    """The finding: a 4.4 MB CSV became 97 MB of JSONL. Conversion stops once the JSONL would pass its limit, with
    the table's own finding (not "the file is too large", which a 4 MB file is not)."""
    data = _tiny_rows(2_000)
    conversion = convert_table([data], filename="class.csv", max_output_bytes=20_000)
    lines = list(conversion.lines())
    assert sum(len(line) for line in lines) <= 20_000 < len(data) * 20
    assert [f.code for f in conversion.findings] == ["table_too_large"]


def test_an_ordinary_table_converts_whole() -> None:
    """A class's table of a hundred rows converts as before."""
    conversion = convert_table([_tiny_rows(100)], filename="class.csv")
    assert len(list(conversion.lines())) == 100 and conversion.findings == []
