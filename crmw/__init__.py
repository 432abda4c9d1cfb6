"""crmw: the command-line front door of crm-warehouse (run, simulate, airflow)."""
