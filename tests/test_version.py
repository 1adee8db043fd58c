"""The version: written once (version.py), told by every door a user asks it at."""

import re
import subprocess

from service import ROOT
from version import __version__

SEMVER = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?")


def test_the_version_is_semantic():
    assert SEMVER.fullmatch(__version__), __version__


def test_run_sh_prints_the_version(service):
    result = subprocess.run([str(ROOT / "run.sh"), "--version"], cwd=ROOT, env=service.env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"ankisync {__version__}\n"


def test_health_and_the_openapi_document_give_the_version(service):
    status, _, health = service.call("GET", "/api/v1/health")
    assert status == 200 and health["version"] == __version__
    status, _, document = service.call("GET", "/api/v1/openapi.json", token=None)
    assert status == 200 and document["info"]["version"] == __version__
    assert "version" in document["components"]["schemas"]["Health"]["properties"]
    # the unauthenticated doors keep it to themselves
    assert "version" not in service.call("GET", "/healthz", token=None)[2]


def test_the_changelog_has_a_release_heading_for_the_version():
    headings = re.findall(r"^## \[([^\]]+)\] - (\d{4}-\d{2}-\d{2})$",
                          (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert headings and headings[0][0] == __version__, headings  # the newest release first


def test_the_images_label_default_is_the_version():
    """Docker reads no Python: the Dockerfile's VERSION default (its labels) says it again."""
    defaults = re.findall(r"^ARG VERSION=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert defaults == [__version__]
