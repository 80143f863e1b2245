"""Interoperability with other toolkits' checkpoint formats (NeMo .nemo import and export)."""
