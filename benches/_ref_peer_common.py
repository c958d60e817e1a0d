"""What the value benchmarks' peers share: the byte pattern of their values and
their peak RSS."""

from __future__ import annotations

# Period 251 (prime): a piece landing at the wrong offset never matches.
PATTERN = bytes(range(251)) * 4177


def filled(size: int) -> bytearray:
    """``size`` bytes of PATTERN, built in place by doubling (no second copy)."""
    value = bytearray(size)
    view = memoryview(value)
    done = min(size, len(PATTERN))
    view[:done] = PATTERN[:done]
    while done < size:
        step_len = min(done, size - done)
        view[done : done + step_len] = view[:step_len]
        done += step_len
    return value


def peak_rss(*, reset: bool) -> dict[str, int | bool]:
    """VmHWM (bytes); with ``reset``, first set back to the current RSS when the kernel allows."""
    was_reset = False
    if reset:
        try:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")
            was_reset = True
        except OSError:
            pass
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return {"hwm": int(fields["VmHWM"].split()[0]) * 1024, "reset": was_reset}
