"""The engine's local HTTP API (``pointsam serve``): FastAPI app, request schemas and the server.

``python -m pointsam_engine.api docs/openapi.json`` writes the OpenAPI schema without starting a server.
"""
