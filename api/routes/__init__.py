"""Thin FastAPI routers; the work happens in api.services."""
