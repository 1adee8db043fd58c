"""Model actions (note types), updateNoteModel, and the note-type lookups other groups share.

An edit that adds, removes or moves a field or a card template, and a note given
another note type, change the collection's schema: schema.change makes them with a
sync before and a full upload after. Other edits are synced like added notes.
"""

import copy
import re

from anki.consts import MODEL_CLOZE
from anki.errors import NotFoundError

from ankiconnect import schema
from ankiconnect.dispatch import ActionError, action, collection_action


def model(col, name):
    """The note type of that name, or the add-on's refusal."""
    model = col.models.by_name(name) if isinstance(name, str) else None
    if model is None:
        raise ActionError(f"model was not found: {name}")
    return model


def _by_id(col, model_id):
    try:
        found = col.models.get(model_id)
    except (TypeError, ValueError, OverflowError):
        found = None
    if found is None:
        raise ActionError(f"model was not found: {model_id}")
    return found


def _field(col, notetype, name):
    found = col.models.field_map(notetype).get(name) if isinstance(name, str) else None
    if found is None:
        raise ActionError(f"field was not found in {notetype['name']}: {name}")
    return found[1]


def _template(notetype, name):
    for template in notetype["tmpls"]:
        if template["name"] == name:
            return template
    raise ActionError(f"template was not found in {notetype['name']}: {name}")


def _name(value, what):
    if not isinstance(value, str) or not value.strip():
        raise ActionError(f"{what} must be a non-empty string: {value!r}")
    return value


def fields_info(note):
    """A note's fields as the add-on's notesInfo and cardsInfo show them."""
    return {field["name"]: {"value": note.fields[field["ord"]], "order": field["ord"]}
            for field in note.note_type()["flds"]}


# Reading

@collection_action
def modelNames(col):
    return [model.name for model in col.models.all_names_and_ids()]


@collection_action
def modelNamesAndIds(col):
    return {model.name: model.id for model in col.models.all_names_and_ids()}


@collection_action
def findModelsById(col, modelIds):
    return [_by_id(col, model_id) for model_id in modelIds]


@collection_action
def findModelsByName(col, modelNames):
    return [model(col, name) for name in modelNames]


@collection_action
def modelNameFromId(col, modelId):
    return _by_id(col, modelId)["name"]


@collection_action
def modelFieldNames(col, modelName):
    return [field["name"] for field in model(col, modelName)["flds"]]


@collection_action
def modelFieldDescriptions(col, modelName):
    return [field.get("description", "") for field in model(col, modelName)["flds"]]


@collection_action
def modelFieldFonts(col, modelName):
    return {field["name"]: {"font": field["font"], "size": field["size"]}
            for field in model(col, modelName)["flds"]}


# what the add-on counts as a field on a template: {{...}} holding no #, / or }
_FIELD_REFERENCE = re.compile(r"{{([^#/}]+?)}}")


def _fields_on(side):
    """The field names a template side shows, modifiers (`text:`, `cloze:`) taken off."""
    return [found.replace("{", "").split(":")[-1] for found in _FIELD_REFERENCE.findall(side)]


@collection_action
def modelFieldsOnTemplates(col, modelName):
    templates = {}
    for template in model(col, modelName)["tmpls"]:
        question = [name for name in _fields_on(template["qfmt"]) if name != "FrontSide"]
        answer = [name for name in _fields_on(template["afmt"])
                  if name != "FrontSide" and name not in question]
        templates[template["name"]] = [question, answer]
    return templates


@collection_action
def modelTemplates(col, modelName):
    return {template["name"]: {"Front": template["qfmt"], "Back": template["afmt"]}
            for template in model(col, modelName)["tmpls"]}


@collection_action
def modelStyling(col, modelName):
    return {"css": model(col, modelName)["css"]}


# Making and editing

@action
def createModel(context, modelName, inOrderFields, cardTemplates, css=None, isCloze=False):
    if len(inOrderFields) == 0:
        raise ActionError("Must provide at least one field for inOrderFields")
    if len(cardTemplates) == 0:
        raise ActionError("Must provide at least one card for cardTemplates")
    with context.worker.lock:
        col = context.collection()
        models = col.models
        if isinstance(modelName, str) and models.id_for_name(modelName) is not None:
            raise ActionError("Model name already exists")
        notetype = models.new(_name(modelName, "modelName"))
        if isCloze:
            notetype["type"] = MODEL_CLOZE
        for name in inOrderFields:
            models.add_field(notetype, models.new_field(_name(name, "each of inOrderFields")))
        if css is not None:
            notetype["css"] = css
        for number, card in enumerate(cardTemplates, start=1):
            template = models.new_template(card.get("Name", f"Card {number}"))
            template["qfmt"], template["afmt"] = card["Front"], card["Back"]
            models.add_template(notetype, template)
        models.add(notetype)  # a new note type syncs normally
    context.sync_soon()
    return notetype


def _moved(before, after):
    """Whether fields or templates were added, removed or reordered: a schema change."""
    return any([item["ord"] for item in after[kind]] != [item["ord"] for item in before[kind]]
               for kind in ("flds", "tmpls"))


def _edit(context, action_name, modelName, edit):
    """Change a note type: edit(col, notetype) changes a copy of it (or refuses, changing
    nothing), then the copy is saved; the schema-safe way when it moved fields or templates."""
    def plan(col):
        stored = model(col, modelName)
        edited = copy.deepcopy(stored)  # the cached one stays as saved until saved
        result = edit(col, edited)

        def apply(col):
            col.models.update_dict(edited)
            return result
        return _moved(stored, edited), apply
    return schema.change(context, action_name, plan)


@action
def updateModelTemplates(context, model):
    templates = model["templates"]

    def edit(col, notetype):
        for template in notetype["tmpls"]:
            given = templates.get(template["name"])
            if given:  # only the sides given, and not empty, change
                template["qfmt"] = given.get("Front") or template["qfmt"]
                template["afmt"] = given.get("Back") or template["afmt"]
    return _edit(context, "updateModelTemplates", model["name"], edit)


@action
def updateModelStyling(context, model):
    css = model["css"]

    def edit(col, notetype):
        notetype["css"] = css
    return _edit(context, "updateModelStyling", model["name"], edit)


@action
def findAndReplaceInModels(context, modelName, findText, replaceText, front=True, back=True,
                           css=True):
    changed = []
    with context.worker.lock:
        col = context.collection()
        if modelName:
            names = [model(col, modelName)["name"]]
        else:
            names = [found.name for found in col.models.all_names_and_ids()]
        for name in names:
            notetype = copy.deepcopy(model(col, name))
            sides = [(notetype, "css")] if css and findText in notetype["css"] else []
            for template in notetype["tmpls"]:
                sides += [(template, side) for side, wanted in (("qfmt", front), ("afmt", back))
                          if wanted and findText in template[side]]
            for holder, key in sides:
                holder[key] = holder[key].replace(findText, replaceText)
            if sides:  # the add-on saves every one; unchanged ones need no sync
                col.models.update_dict(notetype)
                changed.append(name)
    if changed:
        context.sync_soon()
    return len(changed)


@action
def modelTemplateRename(context, modelName, oldTemplateName, newTemplateName):
    def edit(col, notetype):
        _template(notetype, oldTemplateName)["name"] = newTemplateName
    return _edit(context, "modelTemplateRename", modelName, edit)


@action
def modelTemplateReposition(context, modelName, templateName, index):
    def edit(col, notetype):
        col.models.reposition_template(notetype, _template(notetype, templateName), index)
    return _edit(context, "modelTemplateReposition", modelName, edit)


@action
def modelTemplateAdd(context, modelName, template):
    name, front, back = template["Name"], template["Front"], template["Back"]

    def edit(col, notetype):
        for existing in notetype["tmpls"]:
            if existing["name"] == name:  # one of that name: its sides are replaced
                existing["qfmt"], existing["afmt"] = front, back
                return
        added = col.models.new_template(name)
        added["qfmt"], added["afmt"] = front, back
        col.models.add_template(notetype, added)
    return _edit(context, "modelTemplateAdd", modelName, edit)


@action
def modelTemplateRemove(context, modelName, templateName):
    def edit(col, notetype):
        removed = _template(notetype, templateName)
        if len(notetype["tmpls"]) < 2:
            raise ActionError("must have 1 template")
        col.models.remove_template(notetype, removed)
    return _edit(context, "modelTemplateRemove", modelName, edit)


@action
def modelFieldRename(context, modelName, oldFieldName, newFieldName):
    def edit(col, notetype):
        col.models.rename_field(notetype, _field(col, notetype, oldFieldName), newFieldName)
    return _edit(context, "modelFieldRename", modelName, edit)


@action
def modelFieldReposition(context, modelName, fieldName, index):
    def edit(col, notetype):
        col.models.reposition_field(notetype, _field(col, notetype, fieldName), index)
    return _edit(context, "modelFieldReposition", modelName, edit)


@action
def modelFieldAdd(context, modelName, fieldName, index=None):
    def edit(col, notetype):
        models = col.models
        if fieldName not in models.field_map(notetype):  # only when missing, as in the add-on
            models.add_field(notetype, models.new_field(_name(fieldName, "fieldName")))
        if index is not None:  # moved even when it was there
            models.reposition_field(notetype, models.field_map(notetype)[fieldName][1], index)
    return _edit(context, "modelFieldAdd", modelName, edit)


@action
def modelFieldRemove(context, modelName, fieldName):
    def edit(col, notetype):
        col.models.remove_field(notetype, _field(col, notetype, fieldName))
    return _edit(context, "modelFieldRemove", modelName, edit)


@action
def modelFieldSetFont(context, modelName, fieldName, font):
    def edit(col, notetype):
        field = _field(col, notetype, fieldName)
        if not isinstance(font, str):
            raise ActionError(f"font should be a string: {font}")
        field["font"] = font
    return _edit(context, "modelFieldSetFont", modelName, edit)


@action
def modelFieldSetFontSize(context, modelName, fieldName, fontSize):
    def edit(col, notetype):
        field = _field(col, notetype, fieldName)
        if not isinstance(fontSize, int):
            raise ActionError(f"fontSize should be an integer: {fontSize}")
        field["size"] = fontSize
    return _edit(context, "modelFieldSetFontSize", modelName, edit)


@action
def modelFieldSetDescription(context, modelName, fieldName, description):
    def edit(col, notetype):
        field = _field(col, notetype, fieldName)
        if not isinstance(description, str):
            raise ActionError(f"description should be a string: {description}")
        field["description"] = description
        return True
    return _edit(context, "modelFieldSetDescription", modelName, edit)


# A note's note type (a notes action in the add-on; a schema change for Anki)

@action
def updateNoteModel(context, note):
    note_id, model_name, fields = note.get("id"), note.get("modelName"), note.get("fields")
    if not note_id:
        raise ActionError("Note ID is required")
    if not model_name:
        raise ActionError("Model name is required")
    if not fields or not isinstance(fields, dict):
        raise ActionError("Fields must be provided as a dictionary")
    tags = note.get("tags", [])  # as in the add-on: no tags given, none kept
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise ActionError("Must provide tags as a list of strings")

    def plan(col):
        try:
            current = col.get_note(note_id)
        except (NotFoundError, TypeError, ValueError):
            raise ActionError(f"Note was not found: {note_id}") from None
        target = col.models.by_name(model_name) if isinstance(model_name, str) else None
        if target is None:
            raise ActionError(f"Model '{model_name}' not found")

        def apply(col):
            if current.mid != target["id"]:
                # Anki's own change of note type: cards follow the templates by position
                change = col.models.change_notetype_info(old_notetype_id=current.mid,
                                                         new_notetype_id=target["id"]).input
                change.note_ids.append(current.id)
                col.models.change_notetype_of_notes(change)
            changed = col.get_note(current.id)
            names = {name.lower(): name for name in changed.keys()}
            changed.fields = [""] * len(changed.fields)  # every field as given, the rest empty
            for name, value in fields.items():
                if name.lower() in names:
                    changed[names[name.lower()]] = str(value)
            changed.tags = tags
            col.update_note(changed)
        return current.mid != target["id"], apply
    return schema.change(context, "updateNoteModel", plan)
