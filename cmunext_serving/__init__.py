"""The torch-free serving package: decoding and preprocessing (runtime.py), the inference runtimes (engines.py),
the BentoML service (service.py) with its request guard and web page. A bento includes this package whole; the
cmunext library imports it too (one implementation of what is served), never the other way round."""
