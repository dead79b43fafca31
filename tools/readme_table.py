"""Rewrite the configuration table in README.md from rtchub/settings.py (`make docs`)."""

from pathlib import Path

from rtchub.settings import markdown_table

START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"
readme = Path(__file__).resolve().parent.parent / "README.md"
text = readme.read_text()
head, rest = text.split(START, 1)
_, tail = rest.split(END, 1)
readme.write_text(f"{head}{START}\n{markdown_table()}\n{END}{tail}")
print("README.md configuration table updated")
