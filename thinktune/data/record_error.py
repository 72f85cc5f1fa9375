"""The one exception of the data layer: this record cannot be used; its message is the reason in rejects.jsonl."""


class RecordError(ValueError):
    """This record cannot be used; the message is the reason written to rejects.jsonl."""
