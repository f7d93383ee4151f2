"""The progress callback every long step of the data flow takes."""

from collections.abc import Callable

Progress = Callable[[int, int, str], None]  # (done, total, what is running)
