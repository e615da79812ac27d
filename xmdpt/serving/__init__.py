"""``xmdpt serve``: Ray Serve with dynamic batching in front of :class:`xmdpt.sampling.XMDPTPipeline`
(:mod:`xmdpt.serving.server`).
"""
