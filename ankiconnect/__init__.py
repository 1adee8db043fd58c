"""AnkiConnect, headless: the add-on's HTTP JSON API served by the worker.

Yomitan and most card-making tools speak AnkiConnect (`POST /` on port 8765,
`{"action", "version", "params", "key"}`). The worker process owns the
collection, so the endpoint lives there, given the process's Worker; each
action holds the Worker's lock like the jobs do. Replies, error strings and
CORS follow the add-on (FooSoft/anki-connect), so clients that match on them
keep working.

The transport (server.py, peer.py) stands apart from the actions, which are
grouped as the add-on's README groups them (cards, decks, graphical, media,
miscellaneous, models, notes, statistics), each module
registering its own with dispatch.py's `@action`.
"""

import anki.collection  # noqa: F401 (first: anki's own modules need this import order)

# each action module registers its actions as it loads
from ankiconnect import (cards, decks, graphical, media, miscellaneous, models, notes,  # noqa: F401
                         statistics)
from ankiconnect.notes import readd
from ankiconnect.server import start

__all__ = ["readd", "start"]
