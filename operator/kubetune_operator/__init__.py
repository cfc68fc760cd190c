"""The Kopf operator: FineTuneJob to trainer pods and back to status (imports no torch)."""
