"""Kubelet device plugin: NVML discovery, topology-aware preferred allocation, health."""
