"""orchestrator: the ``make bench`` loop (``loadgen-bench``), the one place that drives every package.

It launches a server (``launcher``), runs each load point as a ``loadgen`` command,
writes the report (``analysis``) and stops the server. It is the top of the
layering: nothing in ``loadgen``, ``launcher`` or ``analysis`` imports it.
"""
