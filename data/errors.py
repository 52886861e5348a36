"""The error type raised for malformed input data."""

from __future__ import annotations


class DataError(ValueError):
  """Malformed or unusable input data.

  Subclasses ``ValueError`` so callers that already catch bad values keep
  working. Messages always name the file and, where it applies, the line
  (JSONL, JSON syntax errors) or record index and the offending field, so a
  user can jump straight to the broken record.
  """


def locate(file: str, *, line: int | None = None, record: int | None = None,
           field: str | None = None) -> str:
  """Formats a location prefix such as ``data.jsonl:3: field 'chosen'``.

  Lines are 1-based (what editors show); record indices are 0-based (what
  ``json.load(f)[i]`` or a Parquet row index would use).
  """
  parts = [str(file)]
  if line is not None:
    parts[0] += f":{line}"
  if record is not None:
    parts.append(f"record {record}")
  if field is not None:
    parts.append(f"field {field!r}")
  return ": ".join(parts)
