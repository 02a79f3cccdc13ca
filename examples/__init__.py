"""Runnable example applications, each with its own application.yml."""
