from typing import Final

GRANTED: Final[int]
BUSY: Final[int]
UNCHECKED: Final[int]
NO_FD: Final[int]
LOCK_EX: Final[int]
LOCK_NB: Final[int]

def grab(fd: int, op: int, quick: int, /) -> int: ...
def drop(fd: int, quick: int, /) -> bool: ...
def drains(delta: int, /) -> int: ...
