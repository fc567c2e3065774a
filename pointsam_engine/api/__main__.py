"""``python -m pointsam_engine.api [PATH]``: write the OpenAPI schema (default ``docs/openapi.json``)."""

import json
import sys
from pathlib import Path

from ..output import write_text
from .app import openapi_schema

target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/openapi.json")
target.parent.mkdir(parents=True, exist_ok=True)
write_text(target, json.dumps(openapi_schema(), indent=2, sort_keys=True) + "\n")
print(f"wrote {target}")
