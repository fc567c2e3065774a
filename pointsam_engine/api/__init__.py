"""The engine's local HTTP API (``pointsam serve``), laid out as FastAPI's "bigger applications":

- :mod:`.app`: ``create_app``, which only assembles the rest; :mod:`.routers`: the routes, one ``APIRouter``
  per concern (health, segment, train, jobs, models);
- :mod:`.engine`: the state kept between requests, handed to routes by the ``get_engine`` dependency;
- :mod:`.guard`: token, Host header and body size, before any route; :mod:`.errors`: every error as
  ``{"error", "message"}``; :mod:`.job_work`: what a job request is checked for before it is queued;
- :mod:`.schemas`: the HTTP contract; :mod:`.models`: the models kept loaded and offered;
  :mod:`.server`: uvicorn, the token and the connection file.

``python -m pointsam_engine.api docs/openapi.json`` writes the OpenAPI schema without starting a server.
"""
