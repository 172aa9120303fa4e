"""
Test certificates for client-certificate relaying (spec/smtp.md §8): a CA, client
certificates it signs (subject emailAddress and/or rfc822Name subjectAltName), and CRLs,
made with the `cryptography` package that qmailtx.tls already depends on.
"""

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ONE_DAY = datetime.timedelta(days=1)


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _keyPEM(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class CA:
    """A self-signed CA that issues client certificates and CRLs."""

    def __init__(self, name="Test Client CA"):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - ONE_DAY).not_valid_after(_now() + 30 * ONE_DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def pem(self):
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, cn="client", email=None, sanEmail=None):
        """
        A client certificate: C{(cert PEM, key PEM, serial)}.  C{email} goes into the
        subject's emailAddress, C{sanEmail} into an rfc822Name subjectAltName.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if email is not None:
            attrs.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, email))
        serial = x509.random_serial_number()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs)).issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(_now() - ONE_DAY).not_valid_after(_now() + 30 * ONE_DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
        )
        if sanEmail is not None:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.RFC822Name(sanEmail)]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _keyPEM(key), serial

    def crl(self, revoked=()):
        """A current CRL (PEM) revoking the serial numbers in C{revoked}."""
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.name)
            .last_update(_now() - ONE_DAY).next_update(_now() + ONE_DAY)
        )
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial)
                .revocation_date(_now() - ONE_DAY).build())
        return builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def writeClient(directory, name, certPEM, keyPEM):
    """Write a client's cert and key as files for ssl's load_cert_chain; return the paths."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    cert.write_bytes(certPEM)
    key.write_bytes(keyPEM)
    return str(cert), str(key)
