"""The streaming dataset checker: finding codes, token counts and cost for a fine-tuning file.

Pure: callers hand in byte chunks (of any size) so they control I/O, and the price table; nothing here reads files,
the network or the environment except tokens.py's one-time install of the encoding file. By concern: reading (bytes to
lines to JSON), rules (one example) and line_rules (a whole line), counting (tokens), tables (CSV/TSV), report, and
checker, which runs a file through them.
"""

from dataset_rules.check.checker import check_stream
from dataset_rules.check.reading import DEFAULT_MAX_BYTES
from dataset_rules.check.report import Report, default_epochs
from dataset_rules.check.tables import Conversion, convert_table, is_table

__all__ = ["DEFAULT_MAX_BYTES", "Conversion", "Report", "check_stream", "convert_table", "default_epochs", "is_table"]
