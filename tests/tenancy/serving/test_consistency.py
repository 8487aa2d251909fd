"""X-Consistency-Token: its form, and what is refused."""

from __future__ import annotations

import pytest

from app.tenancy.errors import InvalidConsistencyToken
from app.tenancy.serving.consistency import (
    format_token,
    lsn_from_text,
    parse_token,
    record_end,
)


def test_consistency_token_round_trips_and_names_its_cluster() -> None:
    position = lsn_from_text("16/B374D848")
    assert position == (0x16 << 32) | 0xB374D848
    token = parse_token([format_token(position, "default")])
    assert token is not None
    assert token.for_cluster("default") == position
    assert token.for_cluster("eu2") is None  # positions of two clusters do not compare


def test_consistency_token_absent_is_none() -> None:
    assert parse_token([]) is None


@pytest.mark.parametrize(
    "values",
    [
        ["garbage"],
        ["1.0000000016b374d8.5f3e9a1"],  # short tag
        ["1.0000000016B374D848.5f3e9a1c"],  # upper case, long
        ["2.0000000016b374d8.5f3e9a1c"],  # unknown version
        ["1." + "0" * 10_000],
        ["1.0000000016b374d8.5f3e9a1c", "1.0000000016b374d8.5f3e9a1c"],  # twice
    ],
    ids=["garbage", "short-tag", "upper", "version", "huge", "repeated"],
)
def test_consistency_token_malformed_is_refused(values: list[str]) -> None:
    with pytest.raises(InvalidConsistencyToken):
        parse_token(values)


def test_consistency_record_end_steps_back_over_page_headers() -> None:
    assert record_end(5 * 8192 + 24) == 5 * 8192
    assert record_end(16 * 1024 * 1024 + 40) == 16 * 1024 * 1024
    assert record_end(5 * 8192 + 48) == 5 * 8192 + 48
