"""The run report: one self-contained HTML page per as-of date of what the warehouse and the models
hold, for the people who read the run rather than operate it (reporting/run_report.py)."""
