"""Fine-tuning tasks with their data and metrics: text-to-SQL scored by execution in SQLite
(`fastattn.tasks.text_to_sql`) and natural-wonders descriptions scored by perplexity and fact
accuracy (`fastattn.tasks.natural_wonders`), each fine-tuned per attention kind (`kinds.KINDS`)
from a cached pretrained byte-level TransformerLM. Command line: `python -m fastattn task ...`.
"""
from .kinds import KINDS

TASKS = {"text-to-sql": "text_to_sql", "natural-wonders": "natural_wonders"}  # name -> bundled config


def task_classes(name: str):
    """(task class, data config class, eval config class) of the task `name`."""
    if name == "text-to-sql":
        from .text_to_sql.task import SqlData, SqlEval, TextToSQLTask
        return TextToSQLTask, SqlData, SqlEval
    if name == "natural-wonders":
        from .natural_wonders.task import NaturalWondersTask, WonderData, WonderEval
        return NaturalWondersTask, WonderData, WonderEval
    raise ValueError(f"unknown task {name!r}; accepted: {', '.join(TASKS)}")


__all__ = ["KINDS", "TASKS", "task_classes"]
