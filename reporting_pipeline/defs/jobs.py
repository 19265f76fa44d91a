"""Jobs: building the week's reports, and delivering them."""

from dagster import AssetSelection, define_asset_job

from .assets import aggregated_tables, fetched_records, report_deliveries, report_pdfs

weekly_reports_job = define_asset_job(
    "weekly_reports_job",
    selection=AssetSelection.assets(fetched_records, aggregated_tables, report_pdfs),
    description="Fetch, aggregate, render and store the reports of one (week, shard).",
)

report_delivery_job = define_asset_job(
    "report_delivery_job",
    selection=AssetSelection.assets(report_deliveries),
    description="Email a link to every stored report of one (week, shard) that has not been emailed.",
)
