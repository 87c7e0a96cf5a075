"""The embedded default corpus: the running interpreter's own text, in a stable order."""

from __future__ import annotations

import itertools

from chapters import corpus_sources


def test_stdlib_sources_come_in_sorted_order_with_unique_origins() -> None:
    origins = [
        document.origin for document in itertools.islice(corpus_sources.iter_stdlib_files(), 300)
    ]
    assert origins == sorted(origins)
    assert len(set(origins)) == len(origins)
    assert all(origin.startswith("stdlib:") and origin.endswith(".py") for origin in origins)


def test_stdlib_sources_exclude_installed_packages() -> None:
    assert not any(
        "site-packages" in path.parts or "dist-packages" in path.parts
        for path in corpus_sources.stdlib_source_paths()
    )


def test_a_known_module_is_read_as_its_exact_bytes() -> None:
    root = corpus_sources.stdlib_root()
    document = next(
        d for d in corpus_sources.iter_stdlib_files() if d.origin == "stdlib:json/decoder.py"
    )
    assert document.data == (root / "json" / "decoder.py").read_bytes()


def test_documentation_topics_are_one_document_per_topic() -> None:
    from pydoc_data.topics import topics

    documents = list(corpus_sources.iter_pydoc_topics())
    assert len(documents) == len(topics)
    assert {d.origin for d in documents} == {f"pydoc_data:{name}" for name in topics}


def test_embedded_corpus_is_identical_on_a_second_read() -> None:
    first = [(d.origin, len(d.data)) for d in corpus_sources.iter_embedded_corpus()]
    second = [(d.origin, len(d.data)) for d in corpus_sources.iter_embedded_corpus()]
    assert first == second and len(first) > 1000
