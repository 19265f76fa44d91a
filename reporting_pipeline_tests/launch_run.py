"""A run worker for one (week, shard): the job executed through Dagster against the instance in DAGSTER_HOME,
with the executor the definitions give it, as a launched run is. The fault tests kill it.

Usage: python -m reporting_pipeline_tests.launch_run WEEK SHARD JOB
"""

import sys

from dagster import DagsterInstance, execute_job, reconstructable

from reporting_pipeline.defs.partitions import report_partition_key


def weekly_reports_job():
    from reporting_pipeline.defs.definitions import build_definitions

    return build_definitions().resolve_job_def("weekly_reports_job")


def report_delivery_job():
    from reporting_pipeline.defs.definitions import build_definitions

    return build_definitions().resolve_job_def("report_delivery_job")


def partition_tags(week: str, shard: str) -> dict:
    key = report_partition_key(week, shard)
    return {"dagster/partition": str(key), "dagster/partition/shard": shard, "dagster/partition/week": week}


def main() -> int:
    week, shard, job = sys.argv[1:]
    with DagsterInstance.get() as instance:
        result = execute_job(reconstructable(globals()[job]), instance=instance, tags=partition_tags(week, shard),
                             raise_on_error=False)
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
