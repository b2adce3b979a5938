"""DB-GPT-Hub's prompt forms (`dataset.prompt`): what the instruction holds besides the task sentence.

- ``zero_shot`` (default): DB-GPT-Hub's ``INSTRUCTION_PROMPT`` around the schema sentences (data/schema.py).
- ``one_shot``: its ``INSTRUCTION_ONE_SHOT_PROMPT`` (``num_shot=1``): one worked employee/salary example first.
- ``code``: the database's ``CREATE`` statements (``code_representation=True``): those of a ``*.sql`` file in
  the database's folder where it ships one (Spider's ``schema.sql``), as DB-GPT-Hub finds them (regex
  ``CREATE\\s.*?;``), else the ``sql`` column of ``sqlite_master``. DB-GPT-Hub formats the Python *list* of
  statements into the prompt (``['CREATE ...;', ...]``, escaped newlines included); we join them with
  newlines, and fall back to sqlite_master where it skips the example.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from text2sql.errors import UserError

PROMPT_FORMS = ("zero_shot", "one_shot", "code")

# Byte for byte DB-GPT-Hub's INSTRUCTION_ONE_SHOT_PROMPT (configs/config.py; its triple-quoted source, pinned
# against this in tests/test_forms.py).
ONE_SHOT_INSTRUCTION = (
    "I want you to act as a SQL terminal in front of an example database. "
    "You need only to return the sql command to me. "
    "First, I will show you few examples of an instruction followed by the correct SQL response. "
    "Then, I will give you a new instruction, and you should write the SQL response that appropriately "
    "completes the request.\n### Example1 Instruction:\n"
    "The database contains tables such as employee, salary, and position. "
    "Table employee has columns such as employee_id, name, age, and position_id. employee_id is the primary key. "
    "Table salary has columns such as employee_id, amount, and date. employee_id is the primary key. "
    "Table position has columns such as position_id, title, and department. position_id is the primary key. "
    "The employee_id of salary is the foreign key of employee_id of employee. "
    "The position_id of employee is the foreign key of position_id of position.\n### Example1 Input:\n"
    "List the names and ages of employees in the 'Engineering' department.\n\n### Example1 Response:\n"
    "SELECT employee.name, employee.age FROM employee JOIN position ON employee.position_id = "
    "position.position_id WHERE position.department = 'Engineering';\n###New Instruction:\n{}\n"
)

_CREATE = re.compile(r"CREATE\s.*?;", re.DOTALL | re.IGNORECASE)


def check_form(form: str) -> str:
    if form not in PROMPT_FORMS:
        raise UserError(f"unknown dataset.prompt={form!r}; choose one of {', '.join(PROMPT_FORMS)}")
    return form


def create_statements(db_dir: Path, db_id: str) -> str:
    """The CREATE statements of one database, newline-joined: a shipped *.sql file first, else sqlite_master."""
    folder = Path(db_dir) / db_id
    shipped = sorted(folder.glob("*.sql")) if folder.is_dir() else []
    if shipped:
        text = shipped[0].read_text(encoding="utf-8", errors="replace")
        statements = _CREATE.findall(text)
        if statements:
            return "\n".join(statements)
    path = folder / f"{db_id}.sqlite"
    if not path.is_file():
        raise UserError(f"dataset.prompt=code needs the database of {db_id!r}: neither a *.sql file nor {path} "
                        "exists (use dataset.prompt=zero_shot, or add the database)")
    return sqlite_create_statements(path)


def sqlite_create_statements(path: Path) -> str:
    """The CREATE TABLE statements a SQLite file's sqlite_master holds, newline-joined, each ending with ';'."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND type = 'table' "
                            "AND name NOT LIKE 'sqlite_%' ORDER BY rowid").fetchall()
    except sqlite3.DatabaseError as err:
        raise UserError(f"dataset.prompt=code: cannot read the schema of {path}: {err}") from None
    finally:
        conn.close()
    return "\n".join(f"{sql};" for (sql,) in rows)
