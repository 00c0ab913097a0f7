"""dnstrail analyze: read captures, decode DNS, match transactions, attribute pods, find.

The analyzer never imports bcc; it runs on a laptop or in Jupyter.
"""
