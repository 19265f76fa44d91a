"""Runs jobs for one (week, shard) in this process: the fault tests need a run process they can kill.

Usage: python -m reporting_pipeline_tests.run_job WEEK SHARD JOB [JOB ...]
"""

import sys

from dagster import DagsterInstance

from reporting_pipeline.defs.definitions import build_definitions
from reporting_pipeline.defs.partitions import report_partition_key


def main() -> int:
    week, shard, *jobs = sys.argv[1:]
    definitions = build_definitions()
    with DagsterInstance.ephemeral() as instance:
        for name in jobs:
            result = definitions.resolve_job_def(name).execute_in_process(
                instance=instance, partition_key=report_partition_key(week, shard), raise_on_error=False)
            if not result.success:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
