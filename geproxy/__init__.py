"""geproxy: an etcd v2 proxy on gevent, a drop-in for `etcd --proxy on|readonly`."""

__version__ = "0.1.0"
