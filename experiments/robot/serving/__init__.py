"""Serving a policy over openpi's websocket protocol (server, LIBERO client, wire format)."""
