"""Several forwarding worker processes behind one front (``workers`` > 1 in the node's config).

``front`` serves the public HTTP port, pins each room to a worker (``placement``) and proxies the
room's requests to it (``proxy``); ``supervisor`` starts, watches and restarts the worker processes
(``worker``: a ``sfu.node.Node`` on its own media port, HTTP on a private unix socket).
"""
