"""qmailtx: the qmail mail system as Twisted services."""

from setuptools import setup

setup(
    name="qmailtx",
    version="0.1.0",
    description="qmail's design and guarantees as one Twisted process",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=["qmailtx", "qmailtx.scripts", "twisted.plugins"],
    package_data={"twisted.plugins": ["qmailtx_plugin.py"]},
    include_package_data=True,
    install_requires=[
        "Twisted>=23.10",
        "pyOpenSSL>=23.0",
        "service-identity>=23.1",
        "zope.interface>=6.0",
        "pure-cdb>=4.0",
    ],
    extras_require={
        "test": ["pytest>=7", "aiosmtpd>=1.4"],
    },
    entry_points={"console_scripts": ["qmailtx = qmailtx.scripts.main:run"]},
    zip_safe=False,
)
