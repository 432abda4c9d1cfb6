"""Extract-load: read each source system's deliveries by the source contract into raw schemas,
quarantining what breaks the contract and auditing every load."""
