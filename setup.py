"""Packaging for keycast-tw, a NIP-46 remote signer daemon on Twisted."""

from setuptools import find_namespace_packages, setup

setup(
    name="keycast-tw",
    version="0.1.0",
    description="NIP-46 remote signer (bunker) for Nostr, on Twisted and Autobahn",
    python_requires=">=3.11",
    # Namespace discovery so the SQL migrations directory ships as package data.
    packages=[*find_namespace_packages(include=["keycast_tw", "keycast_tw.*"]), "twisted.plugins"],
    package_data={"keycast_tw": ["py.typed"], "keycast_tw.store.migrations": ["*.sql"]},
    include_package_data=True,
    install_requires=[
        "twisted[tls]>=24.7.0",
        "autobahn[twisted]>=24.4.2",
        "treq>=23.11.0",
        "klein>=24.8.0",
        "pynacl>=1.5.0",
        # keycast_tw.nostr.keys reaches libsecp256k1 through coincurve's cffi module for
        # constant-time raw-x ECDH and keypair-cached signing: pin the major version.
        "coincurve>=21.0.0,<22",
        "cryptography>=42.0.0",
        "service-identity>=24.1.0",
        "orjson>=3.10.0",
        "prometheus-client>=0.20.0",
        "google-auth>=2.30.0",
        "segno>=1.6.0",
    ],
    extras_require={
        "test": [
            "hypothesis>=6.100.0",
            "ruff>=0.6.0",
            "mypy>=1.11.0",
            "mypy-zope>=1.0.5",
            "pyyaml>=6.0",
            "nostr-sdk>=0.45.1",
            "supervisor>=4.2",
        ],
    },
    entry_points={"console_scripts": ["keycast = keycast_tw.cli.main:main"]},
)
