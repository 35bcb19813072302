"""Trace-driven cluster simulator: replays jobs through the extender's and the device
plugin's own decision code (``simulator.decisions``) and kube-scheduler's model
(``simulator.kube``), and compares placement policies (``gputopo simulate``)."""
