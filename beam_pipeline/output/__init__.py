"""The output stage: Parquet files per bundle into the run's staging folder (sink), the run's final step that
reconciles and publishes them (finalize, publish) and commits them to Iceberg (iceberg)."""
