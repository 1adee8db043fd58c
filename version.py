"""ankisync's version: the one place it is written (Semantic Versioning).

`./run.sh --version`, GET /api/v1/health, the OpenAPI document and the image's
labels read it from here; CHANGELOG.md has a heading for it (tests/test_version.py).
"""

__version__ = "1.0.0"
