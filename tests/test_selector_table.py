"""The README's selector table is the registry's: `hf_prune.select.registry.markdown_table`, verbatim.

The table sits between the two markers below; after adding, renaming or re-describing a selector,
paste the new output of ``python -c "from hf_prune.select import registry; print(registry.markdown_table())"``
between them. (Until the README first carries the markers this test fails: that is the reminder.)
"""

from pathlib import Path

import hf_prune as hp  # noqa: F401  (imports every selector module, so the registry is complete)
from hf_prune.select import registry

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_table() -> str | None:
    text = README.read_text()
    if registry.TABLE_START not in text or registry.TABLE_END not in text:
        return None
    return text.split(registry.TABLE_START, 1)[1].split(registry.TABLE_END, 1)[0].strip()


def test_the_readme_selector_table_is_the_registry_s():
    table = readme_table()
    assert table is not None, (
        f"README.md has no selector table between {registry.TABLE_START!r} and {registry.TABLE_END!r}; "
        "paste registry.markdown_table() there"
    )
    assert table == registry.markdown_table(), "README.md's selector table is out of date: paste registry.markdown_table()"


def test_the_table_has_one_row_per_selector():
    rows = registry.markdown_table().splitlines()[2:]
    assert [row.split("|")[1].strip(" `") for row in rows] == [
        info.name for family in registry.FAMILIES for info in registry.selectors(family)]
    assert sorted(row.split("|")[1].strip(" `") for row in rows) == registry.names()
    k_center = next(row for row in rows if row.startswith("| `k_center_greedy` |"))
    assert k_center.split("|")[2:7] == [" coverage ", f" {registry.get('k_center_greedy').summary} ",
                                        " `embedding_column` ", " yes ", " yes "]
