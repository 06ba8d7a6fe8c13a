"""Data: loading through `datasets`, templating, collation, and the bundled demo task."""

from softprompt.data.collate import BatchStream, collate, collate_sources, pad_right
from softprompt.data.loading import encode_rows, load_eval_split, load_split, load_splits

__all__ = ["BatchStream", "collate", "collate_sources", "pad_right", "encode_rows", "load_eval_split", "load_split", "load_splits"]
