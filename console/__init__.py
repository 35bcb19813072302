"""Operator tools: ``gputopo cluster nodes|show``, ``gputopo explain``, ``kubectl gputopo``.

They load the cluster as the extender sees it (GPUTopology objects and the pods' GPU
annotations, from the API or a cluster file) into the extender's own ``ClusterState``
and answer with the extender's own decision code and messages. This package sits above
``extender`` and ``topology``; nothing imports it.
"""
