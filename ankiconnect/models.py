"""Model actions (note types), and the note-type lookups other groups share."""

from ankiconnect.dispatch import ActionError, collection_action


def model(col, name):
    """The note type of that name, or the add-on's refusal."""
    model = col.models.by_name(name) if isinstance(name, str) else None
    if model is None:
        raise ActionError(f"model was not found: {name}")
    return model


@collection_action
def modelNames(col):
    return [model.name for model in col.models.all_names_and_ids()]


@collection_action
def modelNamesAndIds(col):
    return {model.name: model.id for model in col.models.all_names_and_ids()}


@collection_action
def modelFieldNames(col, modelName):
    return [field["name"] for field in model(col, modelName)["flds"]]


def fields_info(note):
    """A note's fields as the add-on's notesInfo and cardsInfo show them."""
    return {field["name"]: {"value": note.fields[field["ord"]], "order": field["ord"]}
            for field in note.note_type()["flds"]}
