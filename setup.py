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
    # Bounded to the major versions requirements.txt pins and the tests run on.
    install_requires=[
        # geproxy.sockio uses gevent internals, checked by tests/test_sockio.py on these
        "gevent>=26.9,<27",
        "greenlet>=3,<4",
        "requests>=2.28,<3",
        "urllib3>=2,<3",
        "prometheus-client>=0.17,<1",
        "dnspython>=2.0,<3",
        "gunicorn>=27.0.1,<28",
        "packaging>=23,<27",  # gunicorn's gevent worker imports it without requiring it
        "cryptography>=41,<51",  # --auto-tls / --peer-auto-tls
    ],
    entry_points={"console_scripts": ["gevent-etcdproxy = geproxy.cli:main"]},
)
