"""Partition names and the errors that mean "no partition for that day yet"."""

import datetime as dt

from inferq.common import partitions


class _PgError(Exception):
    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def test_names_round_trip_and_foreign_tables_are_not_partitions():
    name = partitions.partition_name("prediction_batches", dt.date(2026, 2, 28))
    assert name == "prediction_batches_p20260228"
    assert partitions.parse_name(name) == partitions.Partition(
        "prediction_batches", name, dt.date(2026, 2, 28)
    )
    for other in ("predictions", "users_p20260101", "predictions_p20261341", "predictions_p2026"):
        assert not partitions.is_partition_name(other)


def test_only_a_missing_day_partition_counts_as_missing():
    missing = partitions.missing_partition
    assert missing(_PgError("42P01", 'relation "predictions_p20261130" does not exist'))
    assert missing(_PgError("23514", 'no partition of relation "predictions" found for row'))
    assert not missing(_PgError("42P01", 'relation "inferq_stage_predictions" does not exist'))
    assert not missing(_PgError("23514", 'new row violates check constraint "x"'))
    assert not missing(ValueError("relation predictions_p20261130 does not exist"))


def test_the_day_of_a_timestamp_is_its_utc_day():
    late = dt.datetime(2026, 3, 1, 23, 59, 59, 999000, tzinfo=dt.UTC).timestamp()
    assert partitions.day_of(late) == dt.date(2026, 3, 1)
    assert partitions.day_of(late + 0.002) == dt.date(2026, 3, 2)
