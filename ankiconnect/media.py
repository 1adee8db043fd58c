"""Media actions, and storing the media a note request carries."""

import base64
import fnmatch
import hashlib
import html
import logging
import os
import unicodedata

from ankiconnect.dispatch import ActionError, action, collection_action
from ankiconnect.fetch import media_bytes

log = logging.getLogger(__name__)

MEDIA_KINDS = ("audio", "video", "picture")


def store(col, filename, content, skip_hash=None, delete_existing=True):
    """Write a media file; its stored name, or None when skipHash matched."""
    if not isinstance(filename, str) or not filename:
        raise ActionError("filename must be a non-empty string")
    if skip_hash is not None and hashlib.md5(content).hexdigest() == skip_hash:
        return None
    if delete_existing and _media_name(filename) == filename:
        # a name with a folder in it is flattened by write_data: nothing to replace
        col.media.trash_files([filename])
    # write_data renames when another file already has the name
    return col.media.write_data(filename, content)


def fetch_media(settings, request):
    """Each media item of a note request with its bytes (or the error getting them).

    Runs before the collection lock is taken: a slow URL must not block reads.
    """
    items = []
    for kind in MEDIA_KINDS:
        value = request.get(kind) if isinstance(request, dict) else None
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, dict):
                continue
            try:
                content = media_bytes(settings, item.get("data"), item.get("path"),
                                      item.get("url"))
            except ActionError as error:
                content = error
            items.append((kind, item, content))
    return items


def attach_media(col, note, items):
    """Store the fetched media and reference it in the fields it names.

    As in the add-on, a file that could not be had puts its error into those
    fields instead of failing the note. Returns the stored file names.
    """
    stored = []
    for kind, item, content in items:
        fields = item.get("fields") or []
        if isinstance(fields, str):
            fields = [fields]
        try:
            if isinstance(content, Exception):
                raise content
            name = store(col, item.get("filename"), content, item.get("skipHash"),
                          item.get("deleteExisting"))
        except ActionError as error:
            log.warning("AnkiConnect: media %r: %s", item.get("filename"), error)
            text = html.escape(str(error), quote=False)
        else:
            if name is None:
                continue
            stored.append(name)
            text = f'<img src="{name}">' if kind == "picture" else f"[sound:{name}]"
        for field in fields:
            if field in note:
                note[field] += text
    return stored


@action
def storeMediaFile(context, filename, data=None, path=None, url=None, skipHash=None,
                   deleteExisting=True):
    content = media_bytes(context.settings, data, path, url)
    with context.worker.lock:
        return store(context.collection(), filename, content, skipHash, deleteExisting)


def _media_name(filename):
    """A file name of the media folder, as the add-on takes it (the last part), or None."""
    if not isinstance(filename, str) or "\0" in filename:
        return None
    name = unicodedata.normalize("NFC", os.path.basename(filename))
    return None if name in ("", ".", "..") else name


def _media_path(col, filename):
    """The media file's real path if it is a file right in the media folder, else None."""
    name = _media_name(filename)
    folder = os.path.realpath(col.media.dir())
    real = os.path.realpath(os.path.join(folder, name)) if name else None
    if real is None or os.path.dirname(real) != folder or not os.path.isfile(real):
        return None  # a symlink out of the folder counts as no file
    return real


@collection_action
def retrieveMediaFile(col, filename):
    path = _media_path(col, filename)
    if path is None:
        return False
    with open(path, "rb") as file:
        return base64.b64encode(file.read()).decode("ascii")


@collection_action
def getMediaFilesNames(col, pattern="*"):
    return sorted(name for name in os.listdir(col.media.dir())
                  if fnmatch.fnmatch(name, pattern)
                  and os.path.isfile(os.path.join(col.media.dir(), name)))


@collection_action
def deleteMediaFile(col, filename):
    if _media_path(col, filename) is not None:
        col.media.trash_files([_media_name(filename)])


@collection_action
def getMediaDirPath(col):
    return os.path.abspath(col.media.dir())
