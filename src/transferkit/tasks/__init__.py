"""Tasks: one module per task owns everything task-specific; every step asks the registry.

See ``README.md`` in this folder for how to add a task.
"""

from transferkit.tasks.base import Task
from transferkit.tasks.registry import (
    DEFAULT_TASK,
    export_task,
    find_task,
    get_task,
    model_task,
    register_task,
    task_names,
    unregister_task,
)

__all__ = ["DEFAULT_TASK", "Task", "export_task", "find_task", "get_task", "model_task", "register_task", "task_names",
           "unregister_task"]
