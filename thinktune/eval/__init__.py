"""Evaluation: reasoning-aware metrics, batched generation, reports."""
