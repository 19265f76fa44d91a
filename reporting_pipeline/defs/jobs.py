"""Jobs: building the week's reports, and delivering them."""

from dagster import AssetSelection, define_asset_job

from .assets import AGGREGATED, DELIVERIES, FETCHED, PDFS, RETRY_ON_STEP_FAILURE_TAG

# A run whose process died (pod evicted, OOM-killed) or was told to stop is retried by the daemon. Step
# failures are not: step retry policies already had their go, and the redrive sensor takes over.
RUN_RETRY_TAGS = {"dagster/max_retries": "2", "dagster/retry_strategy": "FROM_FAILURE",
                  RETRY_ON_STEP_FAILURE_TAG: "false"}

weekly_reports_job = define_asset_job(
    "weekly_reports_job",
    selection=AssetSelection.assets(FETCHED, AGGREGATED, PDFS),
    description="Fetch, aggregate, render and store the reports of one (week, shard), in one streaming step.",
    tags=RUN_RETRY_TAGS,
)

report_delivery_job = define_asset_job(
    "report_delivery_job",
    selection=AssetSelection.assets(DELIVERIES),
    description="Email a link to every stored report of one (week, shard) that has not been emailed.",
    tags=RUN_RETRY_TAGS,
)
