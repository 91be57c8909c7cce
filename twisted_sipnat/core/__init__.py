"""
The sans-IO core: every protocol rule of twisted_sipnat, in pure code.

Nothing under this package imports Twisted, opens a socket or reads a clock: each call takes bytes, events and
``now``, and hands back what to send, when it next needs to wake, and events (the shape of h11 and aioquic).
The Twisted shell (:mod:`twisted_sipnat.controller`, :mod:`twisted_sipnat.protocols`) wires it to sockets and to
the injected reactor; ``tests/core/test_purity.py`` imports every module here with Twisted made unimportable.
See ``docs/architecture.rst`` for where each RFC rule lives.
"""
