"""dnstrail capture: the eBPF recorder (needs BCC) and the capture format (does not).

Importing this package never imports bcc; only ``capture.recorder`` does, lazily.
"""
