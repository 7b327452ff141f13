"""`bastion bench latency`: one request at a time against one or more servers, side by side."""
