"""text2sql: fine-tune code LLMs on Text-to-SQL with Hydra, Lightning and PEFT; score by execution accuracy."""

__version__ = "0.1.0"
