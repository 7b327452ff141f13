"""The API-server process: HTTP in front, every engine rank behind."""
