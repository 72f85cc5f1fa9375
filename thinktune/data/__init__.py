"""Data stage: read any supported format → canonical records → chat-template render → token ids + loss mask."""
