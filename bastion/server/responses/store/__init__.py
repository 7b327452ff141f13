"""The response store: one table in the launcher (service.py, table.py) that every API server
reaches over ipc (client.py), so a follow-up finds its response whichever API server it lands
on. The wire is wire.py; records are opaque bytes to the service."""
