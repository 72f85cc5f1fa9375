"""Retrieval for retrieval-augmented tuning and serving: documents → chunks → BM25 + MiniLM index → passages.

    thinktune rag index DOCS_DIR -o INDEX        # documents.py → chunking.py → index.py
    thinktune rag search INDEX "query" -k 5
    thinktune rag eval INDEX QUESTIONS           # scoring.py: recall@1/@5 of bm25, dense and hybrid

prompt.py writes retrieved passages into a prompt (one format for training, evaluation, chat and serve) and reads
the ids an answer cites. rag sits beside data/: data imports it (training prompts with passages, data/passages.py),
it imports nothing of data, models or methods.
"""
