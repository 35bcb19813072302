"""Generated gRPC stubs for the kubelet device plugin (v1beta1) and PodResources (v1) APIs.

Do not edit the ``*_pb2*`` files: change the ``.proto`` files and run
``python -m plugin.api.generate``.
"""
