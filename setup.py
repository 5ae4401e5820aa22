"""Packaging for geproxy; installs the ``gevent-etcdproxy`` command."""

from setuptools import find_packages, setup

from geproxy import __version__

setup(
    name="geproxy",
    version=__version__,
    description="An etcd v2 proxy on gevent: a drop-in for `etcd --proxy on|readonly`",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["geproxy", "geproxy.*"]),
    python_requires=">=3.9",
    install_requires=[
        # geproxy.sockio uses gevent internals, checked by tests/test_sockio.py on these
        "gevent>=26.9,<27",
        "requests>=2.28",
        "urllib3>=2",
        "prometheus-client>=0.17",
        "dnspython>=2.0",
        "gunicorn>=27.0.1",
        "packaging",  # gunicorn's gevent worker imports it without requiring it
        "cryptography>=41",
    ],
    entry_points={"console_scripts": ["gevent-etcdproxy = geproxy.cli:main"]},
)
