"""The clone's memory: past exchanges of its owner, retrieved into the prompt by relevance to the chat.

exchanges.py: what one remembered exchange is, and how the training split becomes them.
index.py: BM25 (bm25s, Russian and English stems) over them, with the cross-chat rule in the search itself.
contacts.py: the optional contacts file: a relation ("mom", "colleague") per chat.
recall.py: the memory directory of a clone: build, load, recall for a conversation, live additions, forget.
"""
