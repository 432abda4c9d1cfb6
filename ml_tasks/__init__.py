"""Customer models as pure functions from DataFrames to DataFrames (no Airflow, no SQL, no
connections); `warehouse_io` is the one module that reads features and publishes results."""
