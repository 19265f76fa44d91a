"""Errors for bad input. Each has a stable `code` for dead letters and a message free of PHI."""

from __future__ import annotations

from dataclasses import dataclass


class ReportInputError(Exception):
    """Input that cannot be used as it is; the item or subscriber is set aside, the rest go on."""

    code = "bad_input"

    def __init__(self, message: str, ref: str = ""):
        super().__init__(message)
        self.ref = ref

    def __reduce__(self):
        # Keep `ref` when the error crosses a process boundary.
        return (type(self), (str(self), self.ref))


@dataclass(frozen=True)
class Issue:
    """One item left out of a report, as data that travels with the subscriber's bundle."""

    stage: str
    code: str
    message: str
    ref: str

    @classmethod
    def from_error(cls, stage: str, error: "ReportInputError") -> "Issue":
        return cls(stage, error.code, str(error), error.ref)


class MalformedRecord(ReportInputError):
    code = "malformed_record"


class CorruptImage(ReportInputError):
    code = "corrupt_image"


class ImageTooLarge(ReportInputError):
    code = "image_too_large"


class FileTooLarge(ReportInputError):
    code = "file_too_large"


class TextNotUtf8(ReportInputError):
    code = "text_not_utf8"


class MissingObject(ReportInputError):
    code = "missing_object"


class ChecksumMismatch(ReportInputError):
    code = "checksum_mismatch"


class InvalidEmailAddress(ReportInputError):
    code = "invalid_email"


class UnitMismatch(ReportInputError):
    """A record whose unit is not the one its trial's report definition shows: never printed under a wrong unit."""

    code = "unit_mismatch"


class InvalidReportDefinition(ReportInputError):
    """A trial's report definition does not validate: that trial's reports fail, no other trial's.

    The message names the field paths and what is wrong with them (a definition holds no health data).
    """

    code = "invalid_report_definition"
