"""text2sql: fine-tune code LLMs on Text-to-SQL with Hydra, Lightning and PEFT; score by execution accuracy."""

__version__ = "0.1.0"

from text2sql.config.schema import register as _register_config_schemas

_register_config_schemas()  # any compose of conf/ (train.py, `text2sql predict`, tests) needs the typed schemas
