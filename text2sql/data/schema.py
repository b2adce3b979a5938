"""DB-GPT-Hub's schema text, byte for byte, plus a structured form of it that truncation can cut piece by piece.

The text (from DB-GPT-Hub's ``sql_data_process.py``) is::

    {db_id} contains tables such as {t1}, {t2}. Table {t1} has columns such as {c1}, {c2}. {pk} is the primary key.
    Table {t2} has columns such as ... . The {fk col} of {t2} is the foreign key of {col} of {t1}.

Every primary-key and foreign-key line ends with a newline; key indexes count the ``*`` column at index 0.
A composite key is ``The combination of ({a}, {b}) are the primary key.``, listed under the table that owns
its columns. (DB-GPT-Hub's own loop also emits ``The combination of () ...`` under every *other* table;
real Spider has no composite key, so we follow the issue's rule and list it under its own table only.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from text2sql.data.spider import SpiderSchema

PrimaryKey = str | list[str]  # one column name, or the names of a composite key (a list, even of one)


@dataclass
class TableText:
    """One table's sentence and its primary-key lines."""

    name: str
    columns: list[str]
    primary_keys: list[PrimaryKey] = field(default_factory=list)

    def render(self) -> str:
        text = f"Table {self.name} has columns such as {', '.join(self.columns)}. "
        for pk in self.primary_keys:
            if isinstance(pk, list):
                text += f"The combination of ({', '.join(pk)}) are the primary key.\n"
            else:
                text += f"{pk} is the primary key.\n"
        return text

    def key_columns(self) -> set[str]:
        return {c for pk in self.primary_keys for c in (pk if isinstance(pk, list) else [pk])}


@dataclass
class SchemaParts:
    """The schema text as pieces: header (db_id + all table names), tables, foreign-key lines."""

    db_id: str
    table_names: list[str]  # the header always lists every table, even when a table's sentence is cut
    tables: list[TableText]
    fk_lines: list[str]  # each ends with "\n"

    def render(self) -> str:
        header = f"{self.db_id} contains tables such as {', '.join(self.table_names)}. "
        return header + "".join(t.render() for t in self.tables) + "".join(self.fk_lines)

    def copy(self) -> SchemaParts:
        tables = [TableText(t.name, list(t.columns), list(t.primary_keys)) for t in self.tables]
        return SchemaParts(self.db_id, list(self.table_names), tables, list(self.fk_lines))


def schema_parts(schema: SpiderSchema) -> SchemaParts:
    """Build the pieces from tables.json's original names (indexes count the `*` column at 0)."""
    cols = schema.column_names
    tables = [TableText(name, [c for t, c in cols[1:] if t == i]) for i, name in enumerate(schema.table_names)]
    for pk in schema.primary_keys:
        if isinstance(pk, list):
            for i, table in enumerate(tables):
                names = [cols[k][1] for k in pk if cols[k][0] == i]
                if names:
                    table.primary_keys.append(names)
        else:
            tables[cols[pk][0]].primary_keys.append(cols[pk][1])
    fk_lines = [
        f"The {cols[a][1]} of {schema.table_names[cols[a][0]]} is the foreign key of "
        f"{cols[b][1]} of {schema.table_names[cols[b][0]]}.\n"
        for a, b in schema.foreign_keys
    ]
    return SchemaParts(schema.db_id, list(schema.table_names), tables, fk_lines)


def schema_text(schema: SpiderSchema) -> str:
    """DB-GPT-Hub's schema text for one database, byte for byte."""
    return schema_parts(schema).render()


_HEADER = re.compile(r"(?P<db>.*?) contains tables such as (?P<tables>.*?)\. (?=Table )", re.S)
_TABLE = re.compile(
    r"Table (?P<name>.*?) has columns such as (?P<cols>.*?)\. "
    r"(?P<pks>(?:[^\n]* is the primary key\.\n|The combination of \([^\n]*\) are the primary key\.\n)*)"
    r"(?P<fks>(?:The [^\n]* is the foreign key of [^\n]*\.\n)*)",
    re.S,
)
_COMPOSITE = re.compile(r"The combination of \((?P<cols>[^\n]*)\) are the primary key\.")


def parse_schema_text(text: str) -> SchemaParts | None:
    """Invert render() so records (which carry only text) can be cut; None when the text is not ours."""
    header = _HEADER.match(text)
    if header is None:
        return None
    names = header["tables"].split(", ")
    pos, tables, fk_lines = header.end(), [], []
    for i, name in enumerate(names):
        last = i == len(names) - 1
        end = len(text) if last else text.find(f"Table {names[i + 1]} has columns such as ", pos + 1)
        match = _TABLE.fullmatch(text, pos, end) if end > pos else None
        if match is None or match["name"] != name or (match["fks"] and not last):
            return None
        table = TableText(name, match["cols"].split(", ") if match["cols"] else [])
        for line in match["pks"].splitlines():
            composite = _COMPOSITE.fullmatch(line)
            if composite:
                table.primary_keys.append(composite["cols"].split(", ") if composite["cols"] else [])
            else:
                table.primary_keys.append(line.removesuffix(" is the primary key."))
        tables.append(table)
        fk_lines = match["fks"].splitlines(keepends=True)
        pos = end
    parts = SchemaParts(header["db"], names, tables, fk_lines)
    return parts if parts.render() == text else None
