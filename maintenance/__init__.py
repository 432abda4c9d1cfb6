"""Keeping a warehouse that runs every day in shape: what the weekly `crm_maintenance` DAG does
(maintenance/tasks.py)."""
