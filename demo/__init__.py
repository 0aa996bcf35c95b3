"""The live-migration demo: ``python -m demo`` (``make demo``) from a checkout, as root.

Two simulated hosts on one machine: a switch (a bridge in a network namespace
of its own) with host A's NIC, host B's NIC (veths whose peers are switch ports)
and a client (its own netns, a third port). ``examples/echo_service.py`` runs as
pid 1 of its own pid+net namespace with a macvlan on host A's NIC; the client
keeps one TCP connection to it and exchanges numbered messages. The demo
checkpoints the service with criu-macvlan, restores it onto host B's NIC and
checks that the same connection goes on with nothing lost or repeated.

Everything it makes is removed at the end, on failure and on SIGINT/SIGTERM;
the switch and client namespaces are held only by file descriptors, so even a
killed demo leaves no link behind. The last line is ``demo: SUCCESS ...`` or
``demo: FAILED: ...``; exit status 0 only on success.

Modules: :mod:`demo.topology` (the switch, the hosts' NICs, the client's netns, the
service's macvlan), :mod:`demo.service` (the service's tree and the client),
:mod:`demo.paths` (the ways to run CRIU), :mod:`demo.steps` (the six steps and
``main``), :mod:`demo.compare` (``--compare``). It lives outside the installed
package: it runs ``examples/echo_service.py`` and may build ``scripts/criu-sockopt-compat.c``.
"""
