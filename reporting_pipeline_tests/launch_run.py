"""A run worker for one (week, shard): the job executed through Dagster against the instance in DAGSTER_HOME,
with the executor the definitions give it, as a launched run is. The fault tests kill it.

Usage: python -m reporting_pipeline_tests.launch_run WEEK SHARD JOB
       python -m reporting_pipeline_tests.launch_run --retry-of RUN_ID JOB
The second form is the retry the daemon launches of a failed run (re-execution from failure, the failed run's
tags): a process of its own, as a retried run's pod is, with the definitions its environment gives.
"""

import sys

from dagster import DagsterInstance, ReexecutionOptions, execute_job, reconstructable

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
    with DagsterInstance.get() as instance:
        if sys.argv[1] == "--retry-of":
            run_id, job = sys.argv[2:]
            result = execute_job(reconstructable(globals()[job]), instance=instance,
                                 tags=instance.get_run_by_id(run_id).tags, raise_on_error=False,
                                 reexecution_options=ReexecutionOptions.from_failure(run_id, instance))
        else:
            week, shard, job = sys.argv[1:]
            result = execute_job(reconstructable(globals()[job]), instance=instance,
                                 tags=partition_tags(week, shard), raise_on_error=False)
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
