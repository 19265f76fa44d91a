"""The applications: the `reporting-pipeline` command line and the subscription API."""
