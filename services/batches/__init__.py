"""Batch jobs: large synthesis requests rendered in shards by Ray tasks and stored in S3."""
