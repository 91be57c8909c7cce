"""
The service layer: what ``twistd sipnat`` runs, one concern per module.

Above the library (the sans-IO :mod:`twisted_sipnat.core` and the Twisted shell, :mod:`twisted_sipnat.controller`
and :mod:`twisted_sipnat.protocols`), never below it: nothing in the core or the shell imports this package.

- :mod:`.options`: the ``twistd sipnat`` command line (``usage.Options``) and the checking of its values.
- :mod:`.listeners`: the services that own ports (UDP, including ``SO_REUSEPORT`` binding, and stream endpoints).
- :mod:`.sipclient`: the RFC 3261 REGISTER client of the client role, on :mod:`twisted_sipnat.core.sip`;
  :mod:`.sipstreamclient`: the same over TCP/TLS; :mod:`.flowtransport`: which of them a flow gets (``--transport``).
- :mod:`.sipedge`: the edge's SIP side (UDP and stream protocols driving the sans-IO registrar and proxy of
  :mod:`twisted_sipnat.core.registrar` and :mod:`twisted_sipnat.core.proxy`).
- :mod:`.stunstream`: STUN over TCP (RFC 8489 §6.2.2), framed by :class:`twisted_sipnat.core.stun.StreamFramer`.
- :mod:`.client`, :mod:`.edge`, :mod:`.stunserver`, :mod:`.embedded`: one role each.
- :mod:`.limits`: the open-file limit raised at start-up, and the connection cap that fits under it.
- :mod:`.workers`: several processes on one port (the parent's supervision, and a worker's own life cycle).
- :mod:`.figures`: the operator's figures, gathered from a role's parts on demand; :mod:`.flowfigures`: a
  controller's; :mod:`.metrics`: served to Prometheus (``--metrics``); :mod:`.statslog`: logged
  (``--stats-interval``).
- :mod:`.worker`: the worker entry point, ``python -m twisted_sipnat.service.worker ROLE [OPTIONS]``; nothing
  imports it.

This ``__init__`` imports nothing, so that the twistd plugin's option parsing loads only :mod:`.options`.
No role uses ``twisted.protocols.sip`` (which imports the global reactor when it loads); the roles are still
imported by :mod:`twisted_sipnat.tap` only once twistd has chosen the reactor, as the worker pool needs.
"""
