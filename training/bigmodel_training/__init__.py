"""The FineTuneJob workload: trainer, dataset validation, PII redaction."""
