"""Ctrl-C that lets the work under way finish: `CtrlC`.

`kcl.callbacks.Checkpoint` uses it so that Ctrl-C during `fit` ends the
step under way, saves it and stops, instead of a `KeyboardInterrupt` out of
a TensorFlow op that loses every step since the last checkpoint.

Example:

>>> ctrl_c = CtrlC("finishing this step and saving it")
>>> ctrl_c.catch()
>>> for step in steps:
...     train(step)
...     if ctrl_c.pressed:
...         break
>>> ctrl_c.release()
"""

import signal
import sys
import threading


class CtrlC:
    """Between `catch()` and `release()`, the first Ctrl-C (SIGINT) only sets `pressed`.

    It prints `kcl: interrupted: <doing> (Ctrl-C again to stop at once) ...`;
    a second Ctrl-C has Python's usual effect (`KeyboardInterrupt`). Only
    the main thread can set a signal handler: elsewhere, or when another
    handler than Python's default is set, `catch()` changes nothing.

    Args:
        doing: what happens before the program stops, for the message.
    """

    def __init__(self, doing):
        self.doing = doing
        self.pressed = False
        self._previous = None

    def catch(self):
        self.pressed = False
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def release(self):
        if self._previous is not None and signal.getsignal(signal.SIGINT) == self._on_sigint:
            signal.signal(signal.SIGINT, self._previous)
        self._previous = None

    def _on_sigint(self, signum, frame):
        self.pressed = True
        signal.signal(signal.SIGINT, self._previous)
        print(f"kcl: interrupted: {self.doing} (Ctrl-C again to stop at once) ...", file=sys.stderr, flush=True)
