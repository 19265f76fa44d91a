"""The Dagster layer: wires the plain-Python stages into assets, jobs, schedules and sensors."""
