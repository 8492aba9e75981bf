"""The benchmark lab: capacity and overload benchmarks, the open-loop driver and its lean HTTP
client, the queueing model, paired comparisons and the PyTorch baseline.

It measures the product from outside (served processes, or the server's inference layer in
this process); the product never imports it.
"""
