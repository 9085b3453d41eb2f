"""Evaluation of stored features: task files (tasks.py), annotation readers (annotations.py), numpy metrics."""
