"""Clients of the services the pipeline uses: MongoDB, S3, SMTP, DKIM signing, and their retries."""
