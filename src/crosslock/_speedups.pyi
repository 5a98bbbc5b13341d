from typing import Any

GRANTED: int
BUSY: int
UNCHECKED: int
NO_FD: int
LOCK_EX: int
LOCK_NB: int

def grab(backend: Any, op: int, /) -> int: ...
def drop(backend: Any, /) -> bool: ...
def drains(delta: int, /) -> int: ...
