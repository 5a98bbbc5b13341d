GRANTED: int
BUSY: int
UNCHECKED: int
NO_FD: int
LOCK_EX: int
LOCK_NB: int

def grab(fd: int, op: int, quick: int, /) -> int: ...
def drop(fd: int, quick: int, /) -> bool: ...
def drains(delta: int, /) -> int: ...
