"""kube-scheduler HTTP extender: filter, prioritize, bind and preempt on the GPU topology."""
