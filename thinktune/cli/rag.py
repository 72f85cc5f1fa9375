"""`thinktune rag ...`: build a retrieval index, search it, and measure its recall.

thinktune rag index bundled:contracts -o runs/contracts-index
thinktune rag search runs/contracts-index "How much notice to end the contract without cause?" -k 5
thinktune rag eval runs/contracts-index bundled:contracts/train bundled:contracts/test
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from thinktune.cli.app import app, console, user_errors
from thinktune.errors import DataError, UserError
from thinktune.progress import status

rag_app = typer.Typer(no_args_is_help=True, help="Retrieval: build, search and evaluate an index (docs/rag.md).")
app.add_typer(rag_app, name="rag")

IndexArg = Annotated[Path, typer.Argument(help="Index folder written by `thinktune rag index`.")]
RetrieverOpt = Annotated[
    str | None, typer.Option("--retriever", help="hybrid, bm25 or dense (default: hybrid when the index has both).")
]


@rag_app.command("index")
@user_errors
def rag_index(
    docs: Annotated[
        str, typer.Argument(help="Folder of .txt/.md/.jsonl (id, text)/.pdf documents, or bundled:contracts.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Index folder to write.")],
    max_chars: Annotated[int, typer.Option(help="Chunk budget in characters (MiniLM reads ~1,000).")] = 800,
    overlap: Annotated[
        int, typer.Option(help="Characters of whole sentences/paragraphs repeated across chunks.")
    ] = 120,
    retriever: Annotated[str, typer.Option(help="hybrid (BM25 + dense), bm25 or dense.")] = "hybrid",
) -> None:
    """Chunk the documents, embed them with all-MiniLM-L6-v2 and/or index them with BM25, and write the index.

    Example: `thinktune rag index docs/ -o runs/docs-index`
    """
    from thinktune.rag.index import build_index, index_bytes

    if max_chars < 50:
        raise UserError(f"--max-chars {max_chars}: give at least 50")
    with status(console, f"indexing {docs}"):
        manifest = build_index(docs, output, max_chars, overlap, retriever)
    size = index_bytes(output)
    console.print(
        f"{output}: {manifest['documents']} documents → {manifest['chunks']} chunks, "
        f"{' + '.join(manifest['retrievers'])}, {size / 1024:.1f} KiB on disk",
        highlight=False,
    )


@rag_app.command("search")
@user_errors
def rag_search(
    index: IndexArg,
    query: Annotated[str, typer.Argument(help="The question.")],
    k: Annotated[int, typer.Option("-k", help="Passages to show.")] = 5,
    retriever: RetrieverOpt = None,
) -> None:
    """The k best passages for a query, with their ids and scores.

    Example: `thinktune rag search runs/docs-index "notice period" -k 3`
    """
    from thinktune.rag.index import open_index

    if k < 1:
        raise UserError(f"-k {k}: give at least 1")
    ix = open_index(index)
    for rank, hit in enumerate(ix.search(query, k, retriever), start=1):
        text = " ".join(hit.chunk.text.split())
        console.print(f"{rank}. [bold]{escape(hit.chunk.id)}[/] ({hit.score:.4f})  {escape(text)}", soft_wrap=True)


@rag_app.command("eval")
@user_errors
def rag_eval(
    index: IndexArg,
    questions: Annotated[
        list[str], typer.Argument(help="Records with a question (user message) and `gold_ids` (JSONL, bundled:NAME).")
    ],
    k: Annotated[str, typer.Option("-k", help="Cut-offs, comma-separated.")] = "1,5",
    retriever: Annotated[
        list[str] | None, typer.Option("--retriever", help="Retriever(s) to measure (default: all the index has).")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the table as JSON.")] = None,
) -> None:
    """Retrieval recall@k (share of gold ids among the first k passages) of bm25, dense and hybrid.

    Example: `thinktune rag eval runs/contracts-index bundled:contracts/test -k 1,5`
    """
    from thinktune.data.reading import read_records
    from thinktune.rag.index import index_bytes, open_index
    from thinktune.rag.prompt import gold_ids, question_turn
    from thinktune.rag.scoring import recall_table

    try:
        ks = sorted({int(x) for x in k.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"-k {k}: give whole numbers such as 1,5") from None
    if not ks or ks[0] < 1:
        raise UserError(f"-k {k}: give cut-offs of at least 1")
    pairs, skipped = [], []
    for ref in questions:
        loaded = read_records(ref)
        skipped += [f"{r.file}:{r.line}: {r.reason}" for r in loaded.rejects]
        for rec in loaded.records:
            where = f"{rec['meta']['source']}:{rec['meta']['line']}"
            gold = gold_ids(rec["meta"])
            if not gold:
                raise DataError(f"{where}: no gold_ids (the ids of the passages that answer the question)")
            found = question_turn(rec["messages"])
            if found is None:
                raise DataError(f"{where}: no user question before the answer")
            pairs.append((found[1], gold))
    if skipped:
        raise DataError(f"{len(skipped)} unreadable question record(s); first: {skipped[0]}")
    ix = open_index(index)
    with status(console, f"retrieving for {len(pairs)} questions"):
        table = recall_table(ix, pairs, ks, retriever or ())
    console.print(
        f"{index}: {len(pairs)} questions, {len(ix.chunks)} chunks, {index_bytes(index) / 1024:.1f} KiB on disk",
        highlight=False,
    )
    out = Table()
    out.add_column("retriever")
    for kk in ks:
        out.add_column(f"recall@{kk}", justify="right")
    for name, row in table.items():
        out.add_row(name, *(f"{row[f'recall@{kk}']:.3f}" for kk in ks))
    console.print(out)
    if json_out:
        json_out.write_text(json.dumps({"questions": len(pairs), "recall": table}, indent=1) + "\n")
