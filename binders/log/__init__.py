"""The embedded log binder (placeholder until the adapter lands)."""
