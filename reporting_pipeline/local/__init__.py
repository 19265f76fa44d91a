"""Local tooling: stand-ins for MongoDB, S3 and SMTP, the dev stack, the demo and synthetic data.

Needs the `local` extra; production code never imports this package.
"""
