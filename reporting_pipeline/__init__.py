"""Weekly PDF reports for clinical-trial participants.

Layers, each a subpackage:
- `stages`: the seed design's stages in order: subscribe, fetch, aggregate, render, store, notify, and
  `stream`, the one step that runs fetch-aggregate-render-store batch by batch on a worker pool.
- `operations`: what keeps the weeks whole: dead letters, redrive, heal, reconcile, retain, status.
- `services`: clients of what we did not write: MongoDB, S3, SMTP (mail), DKIM, retries.
- `apps`: the `reporting-pipeline` CLI and the subscription API.
- `defs`: the Dagster layer (assets, jobs, schedules, sensors, resources); nothing else imports Dagster.
- `local`: stand-ins and tooling for development and the demo (the `local` extra); production never
  imports it.
`settings` (every setting, read once), `weeks`, `sharding`, `errors` and `compat` are shared by all.
"""
