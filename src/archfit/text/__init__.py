"""Models as users hold them: Hugging Face and sentence-transformers directories read for a task
(directory.py), and the text front a compiled file carries: texts in, the task's answers out (io.py)."""
from .directory import TASKS, Directory, is_directory, read_directory
from .io import TextIO

__all__ = ["TASKS", "Directory", "TextIO", "is_directory", "read_directory"]
