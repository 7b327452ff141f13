"""Credentials, scopes, limits, TLS and the audit log."""
