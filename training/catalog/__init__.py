"""The dataset catalog: content-addressed versions in S3, ingest of real layouts, preprocessing, splits, selection and the procedural phantom."""
